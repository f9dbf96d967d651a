"""`python ranges.py model.weights=CKPT`: measure latent_clamp's per-channel ranges of y on clean training
images and store them in a ranges file beside the weights (`CKPT.latent_ranges.pt`), with the weights'
SHA-256; the weights file itself is never modified."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from rnic.classical import ClassicalCodec
from rnic.codecs import load_weights
from rnic.config import build, file_sha256
from rnic.data import SPLITS, ImageDataset
from rnic.defenses.latent import measure_latent_ranges, ranges_file, save_latent_ranges


def measure_ranges(cfg: DictConfig) -> dict:
    """Ranges of y over the images of `ranges_split` (default train), whole; stored beside the weights."""
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
