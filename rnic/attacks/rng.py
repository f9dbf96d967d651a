"""Per-image random draws, so that an image's attack does not depend on the other images of its batch.

Every image gets its own `torch.Generator`, and all of them start from the same seed: image i of a
batch draws exactly what the image would draw alone. The seed is taken from the global RNG, which
`Attack.__call__` seeds with the attack's seed, so a call is reproducible with the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def image_generators(count: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """`count` generators on `device`, all seeded alike from the global RNG."""
    seed = int(torch.randint(0, 2**62, ()))
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(count)]


def rand(generators: list[torch.Generator], shape: tuple[int, ...], like: Tensor) -> Tensor:
    """U(0, 1) samples of `shape` for each image, stacked on a new first dimension."""
    return torch.stack(
        [torch.rand(shape, generator=g, device=g.device, dtype=like.dtype) for g in generators]
    ).to(like.device)


def randn(generators: list[torch.Generator], shape: tuple[int, ...], like: Tensor) -> Tensor:
    """N(0, 1) samples of `shape` for each image, stacked on a new first dimension."""
    return torch.stack(
        [torch.randn(shape, generator=g, device=g.device, dtype=like.dtype) for g in generators]
    ).to(like.device)


def signs(generators: list[torch.Generator], shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Random +-1 of `shape` for each image."""
    return torch.where(rand(generators, shape, like) < 0.5, -1.0, 1.0).to(like.dtype)


# The seed of the draws of a random defense when a result is measured (not when attacked): the ensemble's
# selection and attack.py's figures code each image with the same draw, so the winner reported is the one
# selected. Apart from the attacks' own seeds, so that no attack's EOT draws are the measured ones.
MEASURED_DRAW_SEED = 0x726E6963


@contextmanager
def measured_draws() -> Iterator[None]:
    """Within the block, the global CPU RNG starts from MEASURED_DRAW_SEED (restored after): a random
    defense's draw for an image depends on the image only (`image_generators` seeds every image alike)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(MEASURED_DRAW_SEED)
        yield
