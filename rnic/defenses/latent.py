"""Chen & Ma's latent clamping, and the ranges it clamps to: each channel of y = g_a(x) measured on clean
training images (`ranges.py`, rnic.latent_ranges), stored in a ranges file beside the weights (or inside an
rnic checkpoint), read back and checked against the weights they were measured on."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.defenses.inner import CodecDefense

# Where a checkpoint keeps latent_clamp's measured ranges (rnic checkpoints) or a ranges file keeps them.
RANGES_KEY = "latent_ranges"
RANGES_SUFFIX = ".latent_ranges.pt"


def ranges_file(weights: str | Path) -> Path:
    """Where `ranges.py` stores the latent ranges of a weights file: a new file beside it (a weights file
    is never modified, so its SHA-256 stays the one runs recorded)."""
    return Path(f"{weights}{RANGES_SUFFIX}")


def read_latent_ranges(path: str | Path) -> dict:
    """The latent ranges of a ranges file, of the ranges file beside a weights file (`ranges_file`), or
    stored inside an rnic checkpoint (`rnic.latent_ranges`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"defense.latent_clamp.ranges_from={str(path)!r}: no such file")
    if ranges_file(path).is_file():
        path = ranges_file(path)
    stored = torch.load(path, map_location="cpu", weights_only=True)
    ranges = (stored.get("rnic") or {}).get(RANGES_KEY) if isinstance(stored, dict) else None
    if ranges is None and isinstance(stored, dict):
        ranges = stored.get(RANGES_KEY)
    if ranges is None:
        raise ValueError(
            f"defense.latent_clamp.ranges_from={str(path)!r} holds no latent ranges: measure them on clean "
            f"training images first, `python ranges.py model.weights={path}` (see docs)"
        )
    return {**ranges, "file": str(path), "inside_weights": RANGES_SUFFIX not in path.name}


class LatentClamp(CodecDefense):
    """Chen & Ma's latent clamping: clamp each channel of y = g_a(x) to [low, high], the range measured on
    clean training images (`measure_latent_ranges`), widened by `margin` times its width.

    `ranges_from`: an rnic checkpoint (or a file written by `ranges.py`) holding the ranges; `low` and
    `high` give them directly. Without either, it is refused: a clamp to made-up ranges defends nothing.
    """

    name = "latent_clamp"

    def __init__(
        self,
        ranges_from: str | None = None,
        low: Sequence[float] | None = None,
        high: Sequence[float] | None = None,
        margin: float = 0.0,
        weights: str | None = None,
    ):
        super().__init__()
        if low is None or high is None:
            if not ranges_from:
                raise ValueError(
                    "defense.latent_clamp.ranges_from is not set: latent_clamp needs the per-channel ranges "
                    "of y measured on clean training images (`python ranges.py model.weights=CKPT`)"
                )
            ranges = read_latent_ranges(ranges_from)
            if weights:
                check_ranges_match(ranges, weights)
            low, high = ranges["low"], ranges["high"]
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if low.shape != high.shape or low.dim() != 1 or not bool((low <= high).all()):
            raise ValueError("defense.latent_clamp: low and high must be per-channel ranges with low <= high")
        if not float(margin) >= 0:
            raise ValueError(f"defense.latent_clamp.margin={margin} must be >= 0")
        self.ranges_from = ranges_from
        self.margin = float(margin)
        width = high - low
        self.register_buffer("low", low - self.margin * width)
        self.register_buffer("high", high + self.margin * width)

    def clamp(self, y: Tensor) -> Tensor:
        shape = (1, -1, *[1] * (y.dim() - 2))
        return torch.maximum(torch.minimum(y, self.high.to(y).view(shape)), self.low.to(y).view(shape))

    def check(self, codec: nn.Module) -> None:
        if not hasattr(codec, "g_a"):
            raise ValueError(f"defense.latent_clamp: {type(codec).__name__} has no analysis transform g_a")
        convs = [m for m in codec.g_a.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        channels = convs[-1].out_channels if convs else None  # y's channels (M for the zoo codecs)
        if channels is not None and channels != self.low.numel():
            raise ValueError(
                f"defense.latent_clamp: the stored ranges have {self.low.numel()} channels, "
                f"the codec's latent has {channels} (ranges of another codec?)"
            )

    @contextmanager
    def installed(self, codec: nn.Module):
        """Within the block, the codec's analysis transform g_a outputs clamped latents (forward and
        compress both go through it)."""
        handle = codec.g_a.register_forward_hook(lambda module, args, y: self.clamp(y))
        try:
            yield
        finally:
            handle.remove()


@torch.no_grad()
def measure_latent_ranges(codec: nn.Module, images) -> dict:
    """Per-channel min and max of y = g_a(x) over `images` (an iterable of (B, 3, H, W) or (3, H, W))."""
    low = high = None
    count = 0
    for x in images:
        x = x if x.dim() == 4 else x[None]
        y = codec.g_a(rd.pad(x, rd.stride(codec))[0])
        y_low, y_high = y.transpose(0, 1).flatten(1).amin(1), y.transpose(0, 1).flatten(1).amax(1)
        low = y_low if low is None else torch.minimum(low, y_low)
        high = y_high if high is None else torch.maximum(high, y_high)
        count += x.shape[0]
    if count == 0:
        raise ValueError("latent ranges need at least one image")
    return {"low": low.tolist(), "high": high.tolist(), "images": count}


def save_latent_ranges(path: str | Path, ranges: dict) -> Path:
    """Store `ranges` (with the `weights_sha256` they were measured on) as a ranges file of its own."""
    from rnic.io import atomic_write

    return atomic_write(Path(path), lambda tmp: torch.save({RANGES_KEY: ranges}, tmp))


def check_ranges_match(ranges: dict, weights: str | Path) -> None:
    """Ranges measured on other weights would clamp this codec's latents to another codec's ranges."""
    from rnic.config import file_sha256

    if ranges["inside_weights"] and Path(ranges["file"]).resolve() == Path(weights).resolve():
        return  # stored inside these very weights
    stored, actual = ranges.get("weights_sha256"), file_sha256(weights)
    if stored != actual:
        measured = f"weights with SHA-256 {stored[:16]}..." if stored else "weights it does not record"
        raise ValueError(
            f"defense.latent_clamp.ranges_from={ranges['file']!r} holds ranges measured on {measured}, "
            f"but model.weights={str(weights)!r} has SHA-256 {actual[:16]}...: measure them on these weights "
            f"(`python ranges.py model.weights={weights}`)"
        )
