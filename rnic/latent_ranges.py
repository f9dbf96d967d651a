"""`python ranges.py model.weights=CKPT`: measure latent_clamp's per-channel ranges of y on clean training
images and store them with the checkpoint (`rnic.latent_ranges`), or in a ranges file of their own."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from rnic.config import build, codec_from_config
from rnic.data import SPLITS, ImageDataset
from rnic.defenses import measure_latent_ranges, save_latent_ranges


def measure_ranges(cfg: DictConfig) -> dict:
    """Ranges of y over the images of `ranges_split` (default train), whole; stored with the weights."""
    split = cfg.get("ranges_split") or "train"
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    files = build(cfg.data).prepare((split,))[split]
    if cfg.get("max_images") is not None:
        files = files[: cfg.max_images]
    if not files:
        raise ValueError(f"split={split!r} of data={cfg.data.source} has no images to measure ranges on")
    codec = codec_from_config(cfg).eval()
    dataset = ImageDataset(files)
    ranges = measure_latent_ranges(codec, (dataset[i] for i in range(len(dataset))))
    ranges["split"] = split
    weights = cfg.model.get("weights")
    rnic_checkpoint = weights and "rnic" in torch.load(weights, map_location="cpu", weights_only=True)
    # A bare CompressAI state dict cannot take another entry: the ranges get a file of their own.
    target = Path(weights) if rnic_checkpoint else Path(cfg.paths.output_dir) / "latent_ranges.pt"
    save_latent_ranges(target, ranges)
    width = torch.tensor(ranges["high"]) - torch.tensor(ranges["low"])
    print(
        f"latent ranges of {len(ranges['low'])} channels over {ranges['images']} {split} image(s) "
        f"(median width {float(width.median()):.3g}) stored in {target}"
        + (
            ""
            if rnic_checkpoint
            else f"\nuse them with defense=latent_clamp defense.latent_clamp.ranges_from={target}"
        )
    )
    return ranges
