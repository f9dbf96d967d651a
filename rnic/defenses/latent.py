"""Chen & Ma's latent clamping, and the ranges it clamps to: each channel of y = g_a(x) measured on clean
training images (`ranges.py`'s job, `measure_ranges` below), stored in a ranges file beside the weights (or
inside an rnic checkpoint), read back and checked against the weights they were measured on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from rnic import rd
from rnic.defenses.inner import CodecDefense
from rnic.io import file_sha256, write_torch

# Where a checkpoint keeps latent_clamp's measured ranges (rnic checkpoints) or a ranges file keeps them.
RANGES_KEY = "latent_ranges"
RANGES_SUFFIX = ".latent_ranges.pt"


def ranges_file(weights: str | Path) -> Path:
    """Where `ranges.py` stores the latent ranges of a weights file: a new file beside it (a weights file
    is never modified, so its SHA-256 stays the one runs recorded)."""
    return Path(f"{weights}{RANGES_SUFFIX}")


def read_latent_ranges(path: str | Path) -> dict:
    """The latent ranges of a ranges file, of the ranges file beside a weights file (`ranges_file`), or
    stored inside an rnic checkpoint."""
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
    return write_torch(path, {RANGES_KEY: ranges})


def check_ranges_match(ranges: dict, weights: str | Path) -> None:
    """Ranges measured on other weights would clamp this codec's latents to another codec's ranges."""
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


def measure_ranges(cfg: DictConfig) -> dict:
    """`python ranges.py model.weights=CKPT`'s job: the ranges of y over the images of `ranges_split` (default
    train), whole, stored in a ranges file beside the weights (`CKPT.latent_ranges.pt`) with the weights'
    SHA-256; the weights file itself is never modified."""
    from rnic.classical import ClassicalCodec  # the job's own needs (data: Lightning), not the defence's
    from rnic.codecs import load_weights
    from rnic.config import build
    from rnic.data import SPLITS, ImageDataset

    weights = cfg.model.get("weights")
    if not weights:
        raise ValueError(
            "model.weights is not set: ranges.py measures the latent ranges of trained weights "
            "(an untrained codec's ranges defend nothing)"
        )
    split = cfg.get("ranges_split") or "train"
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    if cfg.get("max_images") is not None and int(cfg.max_images) < 1:
        raise ValueError(f"max_images={cfg.max_images} must be >= 1 (null: every image of the split)")
    codec = build(cfg.model.codec)
    if isinstance(codec, ClassicalCodec) or not hasattr(codec, "g_a"):
        name = cfg.model.codec.get("format") or type(codec).__name__
        raise ValueError(f"model={name} has no latent y to clamp: ranges.py measures a learned codec's")
    load_weights(codec, weights).eval()
    files = build(cfg.data).prepare((split,))[split]
    if cfg.get("max_images") is not None:
        files = files[: cfg.max_images]
    if not files:
        raise ValueError(f"split={split!r} of data={cfg.data.source} has no images to measure ranges on")
    dataset = ImageDataset(files)
    ranges = measure_latent_ranges(codec, (dataset[i] for i in range(len(dataset))))
    ranges.update(split=split, weights_sha256=file_sha256(weights))
    target = ranges_file(weights)
    if not os.access(target.parent, os.W_OK):  # e.g. weights inside a read-only installation
        target = Path(cfg.paths.output_dir) / target.name
    save_latent_ranges(target, ranges)
    width = [high - low for low, high in zip(ranges["low"], ranges["high"], strict=True)]
    print(
        f"latent ranges of {len(width)} channels over {ranges['images']} {split} image(s) "
        f"(median width {sorted(width)[len(width) // 2]:.3g}) stored in {target}"
        + (
            ""
            if target == ranges_file(weights)
            else f"\nuse them with defense.latent_clamp.ranges_from={target}"
        )
    )
    return ranges
