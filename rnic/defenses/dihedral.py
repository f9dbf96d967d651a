"""Flips and 90-degree rotations of an image (the dihedral group of the square), for the random transform
and the self-ensemble."""

from __future__ import annotations

import torch
from torch import Tensor


def dihedral(x: Tensor, k: int) -> Tensor:
    """Transform k in 0..7: a horizontal flip if k >= 4, then k % 4 quarter turns."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def inverse_dihedral(x: Tensor, k: int) -> Tensor:
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def transformed_size(size: tuple[int, int], k: int) -> tuple[int, int]:
    return (size[1], size[0]) if k % 2 else tuple(size)


def shape_keeping(size: tuple[int, int]) -> list[int]:
    """The transforms that keep an image's shape: all 8 for a square, flips and half turns otherwise."""
    return list(range(8)) if size[0] == size[1] else [0, 2, 4, 6]
