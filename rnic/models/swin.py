"""Window self-attention (Swin Transformer) layers as LIC-TCM uses them, in plain PyTorch
(no timm, no einops).

Attribute names follow the authors' modules (jmliu206/LIC_TCM, models/tcm.py: `WMSA`, `Block`, `SwinBlock`)
so that their checkpoints load by key. Feature maps are channels-last, (B, H, W, C), inside these layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch of each sample with probability `rate`."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.rate, self.training)


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B, windows, window * window, C), windows in row-major order."""
    batch, height, width, channels = x.shape
    if height % window or width % window:
        raise ValueError(
            f"window attention needs feature maps whose sides are multiples of {window}, got "
            f"{height}x{width}: pad the image to a multiple of the codec's downsampling_factor"
        )
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, window * window, channels)


def window_merge(windows: Tensor, window: int, rows: int, cols: int) -> Tensor:
    """Inverse of `window_partition` for `rows` x `cols` windows."""
    batch, channels = windows.shape[0], windows.shape[-1]
    x = windows.view(batch, rows, cols, window, window, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, rows * window, cols * window, channels)


def shifted_window_mask(rows: int, cols: int, window: int, shift: int, device=None) -> Tensor:
    """(windows, P, P) boolean mask, True where a query may not attend a key after the cyclic shift: in the
    last row (column) of windows, pixels that wrapped around from the other side of the image."""
    mask = torch.zeros(rows, cols, window, window, window, window, dtype=torch.bool, device=device)
    cut = window - shift
    # Dimensions: window row, window column, query row, query column, key row, key column.
    mask[-1, :, :cut, :, cut:, :] = True
    mask[-1, :, cut:, :, :cut, :] = True
    mask[:, -1, :, :cut, :, cut:] = True
    mask[:, -1, :, cut:, :, :cut] = True
    return mask.reshape(rows * cols, window * window, window * window)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows (`shifted`: over windows shifted by half a window), with a
    learned bias per relative position. The authors' `WMSA`."""

    def __init__(self, dim: int, head_dim: int, window_size: int, shifted: bool):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"window attention of {dim} channels cannot have heads of {head_dim} channels")
        self.head_dim = head_dim
        self.heads = dim // head_dim
        self.scale = head_dim**-0.5
        self.window_size = window_size
        self.shifted = shifted
        self.embedding_layer = nn.Linear(dim, 3 * dim)  # queries, keys, values: each heads x head_dim
        span = 2 * window_size - 1
        self.relative_position_params = nn.Parameter(torch.empty(self.heads, span, span))
        nn.init.trunc_normal_(self.relative_position_params, std=0.02)
        self.linear = nn.Linear(dim, dim)
        # Index of each (query, key) pair's relative offset, shifted to be non-negative.
        coords = torch.stack(
            torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"), -1
        ).view(-1, 2)
        relative = coords[:, None, :] - coords[None, :, :] + window_size - 1
        self.register_buffer("relative_index", relative, persistent=False)

    def relative_bias(self) -> Tensor:
        """(heads, P, P): the bias for each query and key of a window of P pixels."""
        index = self.relative_index
        return self.relative_position_params[:, index[..., 0], index[..., 1]]

    def forward(self, x: Tensor) -> Tensor:
        window, shift = self.window_size, self.window_size // 2
        if self.shifted:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        batch, height, width, channels = x.shape
        rows, cols = height // window, width // window
        windows = window_partition(x, window)
        pixels = windows.shape[2]
        qkv = self.embedding_layer(windows).view(batch, rows * cols, pixels, 3 * self.heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 2, 4).chunk(3, dim=0)  # each (heads, B, windows, P, head_dim)
        similarity = torch.einsum("hbwpc,hbwqc->hbwpq", q, k) * self.scale
        similarity = similarity + self.relative_bias()[:, None, None]
        if self.shifted:
            mask = shifted_window_mask(rows, cols, window, shift, device=x.device)
            similarity = similarity.masked_fill(mask, float("-inf"))
        attention = similarity.softmax(dim=-1)
        out = torch.einsum("hbwij,hbwjc->hbwic", attention, v)
        out = out.permute(1, 2, 3, 0, 4).reshape(batch, rows * cols, pixels, channels)
        out = window_merge(self.linear(out), window, rows, cols)
        if self.shifted:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out


class TransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each residual: one Swin layer. The authors' `Block`."""

    def __init__(self, dim: int, head_dim: int, window_size: int, drop_path_rate: float, shifted: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WindowAttention(dim, head_dim, window_size, shifted)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.msa(self.ln1(x)))
        return x + self.drop_path(self.mlp(self.ln2(x)))


class SwinPair(nn.Module):
    """A window layer then a shifted-window layer on a (B, C, H, W) map. The authors' `SwinBlock`."""

    def __init__(self, dim: int, head_dim: int, window_size: int, drop_path_rate: float):
        super().__init__()
        self.block_1 = TransformerBlock(dim, head_dim, window_size, drop_path_rate, shifted=False)
        self.block_2 = TransformerBlock(dim, head_dim, window_size, drop_path_rate, shifted=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block_2(self.block_1(x.permute(0, 2, 3, 1)))
        return x.permute(0, 3, 1, 2)
