"""Differentiable stand-ins for the codec's rounding, for white-box gradients."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
from compressai.entropy_models import EntropyBottleneck, EntropyModel
from compressai.ops import quantize_ste
from torch import Tensor, nn

PROXIES = ("noise", "ste", "skip", "none")

# Per-image generators for the noise proxy (see `per_image_noise`); None: the global RNG.
_NOISE_GENERATORS: ContextVar[list[torch.Generator] | None] = ContextVar("noise_generators", default=None)


def _uniform_noise(model: EntropyModel, inputs: Tensor, generators: list[torch.Generator]) -> Tensor:
    """U(-0.5, 0.5) noise like `inputs`, each image's part drawn from that image's generator."""
    batch = len(generators)
    if isinstance(model, EntropyBottleneck):
        # The bottleneck quantises its input reshaped to (C, 1, B * h * w), batch-major in the last dim.
        layout = (inputs.shape[0], batch, inputs.shape[-1] // batch)
        parts = [
            torch.rand(layout[::2], generator=g, device=g.device, dtype=inputs.dtype) for g in generators
        ]
        noise = torch.stack(parts, 1).reshape(inputs.shape)
    else:  # batch first, as the Gaussian conditional models take it
        parts = [
            torch.rand(inputs.shape[1:], generator=g, device=g.device, dtype=inputs.dtype) for g in generators
        ]
        noise = torch.stack(parts)
    return noise.to(inputs.device) - 0.5


def _proxied_quantize(model: EntropyModel, original, proxy: str):
    def quantize(inputs, mode, means=None):
        if mode == "symbols":  # the real encoder's path: never touched
            return original(inputs, mode, means)
        if proxy == "noise":  # additive uniform noise, the training-time relaxation
            generators = _NOISE_GENERATORS.get()
            if generators is None:
                return original(inputs, "noise", means)
            return inputs + _uniform_noise(model, inputs, generators)
        if proxy == "skip":  # no quantisation at all: g_s(g_a(x)) for the reconstruction
            return inputs
        if means is None:  # straight-through rounding
            return quantize_ste(inputs)
        return quantize_ste(inputs - means) + means

    return quantize


def check_proxy(proxy: str) -> str:
    if proxy not in PROXIES:
        raise ValueError(f"attack.proxy={proxy!r} is unknown; choose one of: {', '.join(PROXIES)}")
    return proxy


@contextmanager
def quantization_proxy(codec: nn.Module, proxy: str):
    """Within the block, every entropy model of `codec` quantises with `proxy` in its forward.

    In eval mode CompressAI rounds with `torch.round`, whose gradient is zero: an attack
    through it learns nothing. `none` keeps the real rounding and wraps nothing (the
    zero-gradient guard then fires for gradient attacks).
    """
    check_proxy(proxy)
    models = [] if proxy == "none" else [m for m in codec.modules() if isinstance(m, EntropyModel)]
    for model in models:
        model.quantize = _proxied_quantize(model, model.quantize, proxy)
    try:
        yield
    finally:
        for model in models:
            del model.quantize  # the class's own method again


@contextmanager
def per_image_noise(generators: list[torch.Generator]):
    """Within the block, the noise proxy draws image i's noise from `generators[i]`.

    With the global RNG, an image's noise would depend on its position and its batch mates; with
    its own generator it is what the image would get alone.
    """
    token = _NOISE_GENERATORS.set(list(generators))
    try:
        yield
    finally:
        _NOISE_GENERATORS.reset(token)


def is_proxied(model: EntropyModel) -> bool:
    """Whether `model` quantises through a proxy now (inside `quantization_proxy`). Codecs that round their
    latents themselves for the reconstruction (LIC-TCM's straight-through rounding) then take the entropy
    model's proxied values instead, as CompressAI's hyperpriors do."""
    return "quantize" in vars(model)
