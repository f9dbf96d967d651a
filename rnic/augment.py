"""Augmentation of training crops (`data.augment=`): never applied to val or test images."""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torchvision.transforms import v2

AUGMENTS = ("none", "flips", "full")


class FullAugment:
    """A random square window of up to twice the patch side, a random resized crop of it (a quarter to
    all of its area, aspect 3:4 to 4:3) scaled to the patch (so objects appear at up to half their size,
    never much enlarged), flips, a multiple of 90 degrees (exact) and a mild colour jitter."""

    def __init__(self, patch_size: int):
        self.patch_size = int(patch_size)
        self.kornia = K.AugmentationSequential(
            K.RandomResizedCrop((self.patch_size, self.patch_size), scale=(0.25, 1.0)),
            K.RandomHorizontalFlip(),
            K.RandomVerticalFlip(),
            K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.8),
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        side = min(2 * self.patch_size, *image.shape[-2:])
        window = v2.RandomCrop(side)(image)
        out = self.kornia(window[None])[0]
        quarter_turns = int(torch.randint(4, ()))
        return out.rot90(quarter_turns, dims=(-2, -1)).clamp(0, 1).contiguous()

    def __repr__(self) -> str:
        return f"FullAugment(patch_size={self.patch_size})"


def training_transform(patch_size: int, augment: str):
    """Random crops of `patch_size`: alone (none), with flips (flips, the default) or FullAugment (full)."""
    if augment == "none":
        return v2.RandomCrop(patch_size)
    if augment == "flips":
        return v2.Compose([v2.RandomCrop(patch_size), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])
    if augment == "full":
        return FullAugment(patch_size)
    raise ValueError(f"data.augment={augment!r} is not one of {', '.join(AUGMENTS)}")
