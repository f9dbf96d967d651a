"""The checkerboard split of a latent (He et al., CVPR 2021), in the layout MLIC++ uses.

Anchors are the positions (even row, odd column) and (odd row, even column); they are coded first and
give the spatial context of the others, the non-anchors. A half is either kept at full size with zeros
elsewhere (`anchor`, `nonanchor`) or squeezed to half the width, row by row (`squeeze_*`): the squeezed
order is the order of the symbols in the bitstream.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Column of the first anchor in even and in odd rows; non-anchors start in the other column.
_ANCHOR_COLUMNS = (1, 0)
_NONANCHOR_COLUMNS = (0, 1)


def _keep(y: Tensor, columns: tuple[int, int]) -> Tensor:
    out = torch.zeros_like(y)
    for row, column in enumerate(columns):
        out[:, :, row::2, column::2] = y[:, :, row::2, column::2]
    return out


def _squeeze(y: Tensor, columns: tuple[int, int]) -> Tensor:
    out = y.new_zeros(*y.shape[:-1], y.shape[-1] // 2)
    for row, column in enumerate(columns):
        out[:, :, row::2] = y[:, :, row::2, column::2]
    return out


def _unsqueeze(half: Tensor, columns: tuple[int, int]) -> Tensor:
    out = half.new_zeros(*half.shape[:-1], half.shape[-1] * 2)
    for row, column in enumerate(columns):
        out[:, :, row::2, column::2] = half[:, :, row::2]
    return out


def anchor(y: Tensor) -> Tensor:
    """`y` at the anchors, zero elsewhere."""
    return _keep(y, _ANCHOR_COLUMNS)


def nonanchor(y: Tensor) -> Tensor:
    """`y` at the non-anchors, zero elsewhere."""
    return _keep(y, _NONANCHOR_COLUMNS)


def anchor_mask(height: int, width: int) -> Tensor:
    """(1, 1, H, W): 1 at the anchors, 0 elsewhere."""
    return anchor(torch.ones(1, 1, height, width))


def squeeze_anchor(y: Tensor) -> Tensor:
    """The anchors of `y`, (B, C, H, W / 2)."""
    return _squeeze(y, _ANCHOR_COLUMNS)


def squeeze_nonanchor(y: Tensor) -> Tensor:
    """The non-anchors of `y`, (B, C, H, W / 2)."""
    return _squeeze(y, _NONANCHOR_COLUMNS)


def unsqueeze_anchor(half: Tensor) -> Tensor:
    """Squeezed anchors back at their positions, zero elsewhere."""
    return _unsqueeze(half, _ANCHOR_COLUMNS)


def unsqueeze_nonanchor(half: Tensor) -> Tensor:
    """Squeezed non-anchors back at their positions, zero elsewhere."""
    return _unsqueeze(half, _NONANCHOR_COLUMNS)
