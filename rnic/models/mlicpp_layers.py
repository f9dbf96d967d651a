"""The building blocks of MLIC++ (Jiang et al., "MLIC++: Linear Complexity Multi-Reference Entropy Modeling
for Learned Image Compression"), with the attribute names of the authors' code (JiangWeibeta/MLIC, folder
MLIC++), so that their checkpoints load: transforms, the local (checkerboard window attention), channel and
linear global contexts, the entropy parameter networks and the latent residual prediction.

`release` picks between the authors' two checkpoint generations: 2023 (their table of six MSE and six
MS-SSIM models, trained with the first LatentResidualPrediction and SynthesisTransform) and 2024 (the fixed
ones, their updated checkpoint).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from compressai.layers import GDN, subpel_conv3x3
from torch import Tensor, nn

from rnic.models import checkerboard

RELEASES = (2023, 2024)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1)


def gelu_stack(*layers: nn.Module) -> nn.Sequential:
    """The layers with a GELU between each two (the authors' layer indices: 0, 2, 4, ...)."""
    modules = []
    for layer in layers:
        modules += [layer, nn.GELU()]
    return nn.Sequential(*modules[:-1])


class ResidualBlockWithStride(nn.Module):
    """conv3x3 (stride) - GELU - conv3x3 - GDN, plus a strided 1x1 skip."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 2):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride=stride)
        self.act = nn.GELU()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.gdn = GDN(out_ch)
        self.skip = conv1x1(in_ch, out_ch, stride=stride) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.gdn(self.conv2(self.act(self.conv1(x))))
        return out + (self.skip(x) if self.skip is not None else x)


class ResidualBlockUpsample(nn.Module):
    """Sub-pixel conv - GELU - conv3x3 - inverse GDN, plus a sub-pixel skip."""

    def __init__(self, in_ch: int, out_ch: int, upsample: int = 2):
        super().__init__()
        self.subpel_conv = subpel_conv3x3(in_ch, out_ch, upsample)
        self.act = nn.GELU()
        self.conv = conv3x3(out_ch, out_ch)
        self.igdn = GDN(out_ch, inverse=True)
        self.upsample = subpel_conv3x3(in_ch, out_ch, upsample)

    def forward(self, x: Tensor) -> Tensor:
        out = self.igdn(self.conv(self.act(self.subpel_conv(x))))
        return out + self.upsample(x)


class ResidualBlock(nn.Module):
    """conv3x3 - GELU - conv3x3 - GELU, plus a skip (1x1 where the width changes)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch)
        self.act = nn.GELU()
        self.conv2 = conv3x3(out_ch, out_ch)
        self.skip = conv1x1(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.conv2(self.act(self.conv1(x))))
        return out + (self.skip(x) if self.skip is not None else x)


class AnalysisTransform(nn.Module):
    """g_a: image -> y, downsampling by 16."""

    def __init__(self, N: int, M: int):
        super().__init__()
        self.analysis_transform = nn.Sequential(
            ResidualBlockWithStride(3, N),
            ResidualBlock(N, N),
            ResidualBlockWithStride(N, N),
            ResidualBlock(N, N),
            ResidualBlockWithStride(N, N),
            ResidualBlock(N, N),
            conv3x3(N, M, stride=2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.analysis_transform(x)


class SynthesisTransform(nn.Module):
    """g_s: y_hat -> image. The 2023 release maps y to N channels first, the 2024 one after upsampling."""

    def __init__(self, N: int, M: int, release: int = 2024):
        super().__init__()
        first = [ResidualBlock(M, N), ResidualBlockUpsample(N, N)]
        if release == 2024:
            first = [ResidualBlock(M, M), ResidualBlockUpsample(M, N)]
        self.synthesis_transform = nn.Sequential(
            *first,
            ResidualBlock(N, N),
            ResidualBlockUpsample(N, N),
            ResidualBlock(N, N),
            ResidualBlockUpsample(N, N),
            ResidualBlock(N, N),
            subpel_conv3x3(N, 3, 2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.synthesis_transform(x)


class HyperAnalysis(nn.Module):
    """h_a: y -> z, downsampling by 4."""

    def __init__(self, M: int, N: int):
        super().__init__()
        self.reduction = gelu_stack(
            conv3x3(M, N), conv3x3(N, N), conv3x3(N, N, stride=2), conv3x3(N, N), conv3x3(N, N, stride=2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(x)


class HyperSynthesis(nn.Module):
    """h_s: z_hat -> the hyperprior's 2M channels (scales, means)."""

    def __init__(self, M: int, N: int):
        super().__init__()
        wide = M * 3 // 2
        self.increase = gelu_stack(
            conv3x3(N, M),
            subpel_conv3x3(M, M, 2),
            conv3x3(M, wide),
            subpel_conv3x3(wide, wide, 2),
            conv3x3(wide, M * 2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.increase(x)


class EntropyParameters(nn.Module):
    """1x1 convolutions from the gathered contexts to (scales, means)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fusion = gelu_stack(
            conv1x1(in_dim, 320), conv1x1(320, 256), conv1x1(256, 128), conv1x1(128, out_dim)
        )

    def forward(self, params: Tensor) -> Tensor:
        return self.fusion(params)


class LatentResidualPrediction(nn.Module):
    """A correction in (-0.5, 0.5) of the rounded latent, predicted from what is decoded so far.
    The 2023 release narrows from in_dim to out_dim in four steps, the 2024 one through 224 and 128."""

    def __init__(self, in_dim: int, out_dim: int, release: int = 2024):
        super().__init__()
        if release == 2024:
            widths = [in_dim, 224, 128, out_dim]
        else:
            diff = abs(out_dim - in_dim)
            widths = [in_dim, in_dim - diff // 4, in_dim - diff // 2, in_dim - diff * 3 // 4, out_dim]
        self.lrp_transform = gelu_stack(*(conv3x3(a, b) for a, b in itertools.pairwise(widths)))

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * torch.tanh(self.lrp_transform(x))


class ChannelContext(nn.Module):
    """Convolutions over the slices decoded so far."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fushion = gelu_stack(  # sic: the checkpoints' key
            nn.Conv2d(in_dim, 192, 3, padding=1), nn.Conv2d(192, 128, 3, padding=1),
            nn.Conv2d(128, out_dim * 4, 3, padding=1),
        )  # fmt: skip

    def forward(self, decoded: Tensor) -> Tensor:
        return self.fushion(decoded)


def projection(dim: int) -> nn.Sequential:
    """1x1 then depthwise 3x3: the keys', queries' and values' maps."""
    return nn.Sequential(conv1x1(dim, dim), nn.Conv2d(dim, dim, 3, padding=1, groups=dim))


def inverted_bottleneck(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return gelu_stack(
        conv1x1(in_dim, hidden),
        nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
        conv1x1(hidden, out_dim),
    )


def linear_attention(queries: Tensor, keys: Tensor, values: Tensor, heads: int) -> Tensor:
    """Efficient attention (Shen et al.), per head: keys softmaxed over positions, queries over channels,
    out = (K V^T)^T Q. Inputs (B, C, L); output (B, C, L), linear in L."""
    head_dim = queries.shape[1] // heads
    out = []
    for head in range(heads):
        part = slice(head * head_dim, (head + 1) * head_dim)
        key = F.softmax(keys[:, part], dim=2)
        query = F.softmax(queries[:, part], dim=1)
        context = key @ values[:, part].transpose(1, 2)
        out.append(context.transpose(1, 2) @ query)
    return torch.cat(out, dim=1)


class LinearGlobalInterContext(nn.Module):
    """Global context across slices: linear attention over the slices decoded so far, all positions."""

    def __init__(self, dim: int, out_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.keys, self.queries, self.values = projection(dim), projection(dim), projection(dim)
        self.reprojection = nn.Conv2d(dim, out_dim * 3 // 2, 5, padding=2)
        self.mlp = inverted_bottleneck(out_dim * 3 // 2, out_dim * 2, out_dim)
        self.skip = conv1x1(out_dim * 3 // 2, out_dim)

    def forward(self, decoded: Tensor) -> Tensor:
        B, C, H, W = decoded.shape
        q, k, v = (proj(decoded).reshape(B, C, H * W) for proj in (self.queries, self.keys, self.values))
        attention = self.reprojection(linear_attention(q, k, v, self.num_heads).reshape(B, C, H, W))
        return self.skip(attention) + self.mlp(attention)


class LinearGlobalIntraContext(nn.Module):
    """Global context within a slice: in the previous slice, how each non-anchor relates to the anchors
    (queries at its non-anchors, keys at its anchors) weighs the current slice's decoded anchors (values),
    which predicts the current slice's non-anchors."""

    def __init__(self, dim: int, num_heads: int = 2):
        super().__init__()
        self.num_heads = num_heads
        self.keys, self.queries, self.values = projection(dim), projection(dim), projection(dim)
        self.reprojection = nn.Conv2d(dim, dim * 2, 5, padding=2)
        self.mlp = inverted_bottleneck(dim * 2, dim * 4, dim * 2)

    def forward(self, previous: Tensor, anchors: Tensor) -> Tensor:
        B, C, H, W = previous.shape
        queries = checkerboard.squeeze_nonanchor(self.queries(checkerboard.nonanchor(previous))).flatten(2)
        keys = checkerboard.squeeze_anchor(self.keys(checkerboard.anchor(previous))).flatten(2)
        values = checkerboard.squeeze_anchor(self.values(anchors)).flatten(2)
        half = (B, C // self.num_heads, H, W // 2)
        head_dim, out = C // self.num_heads, []
        for head in range(self.num_heads):
            part = slice(head * head_dim, (head + 1) * head_dim)
            # softmax over the squeezed halves, products at full size (zeros elsewhere), as the authors do
            key = checkerboard.unsqueeze_anchor(F.softmax(keys[:, part], dim=2).reshape(half)).flatten(2)
            query = checkerboard.unsqueeze_nonanchor(
                F.softmax(queries[:, part], dim=1).reshape(half)
            ).flatten(2)
            value = checkerboard.unsqueeze_anchor(values[:, part].reshape(half)).flatten(2)
            context = key @ value.transpose(1, 2)
            out.append((context.transpose(1, 2) @ query).reshape(B, head_dim, H, W))
        attention = self.reprojection(torch.cat(out, dim=1))
        return attention + self.mlp(attention)


def relative_position_index(window: int) -> Tensor:
    """(window^2, window^2): the index into a (2 window - 1)^2 table of each pair's relative offset."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


class LocalContext(nn.Module):
    """Local context of the non-anchors: at each position, attention among the window x window decoded
    anchors around it (the other pairs masked), its outputs fused by a window-sized convolution."""

    def __init__(self, dim: int, window_size: int = 5, mlp_ratio: float = 2.0, num_heads: int = 2):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv_proj = nn.Linear(dim, dim * 3)
        self.unfold = nn.Unfold(kernel_size=window_size, padding=(window_size - 1) // 2)
        self.relative_position_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_table, std=0.02)
        self.proj = nn.Linear(dim * 2, dim * 2)
        self.mlp = MLP(dim * 2, int(dim * 2 * mlp_ratio), dim * 2)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim * 2)
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.fusion = nn.Conv2d(dim, dim * 2, kernel_size=window_size)
        self._masks: dict[tuple, Tensor] = {}

    def attention_mask(self, height: int, width: int, device: torch.device) -> Tensor:
        """(L, w^2, w^2): 0 where both window positions are anchors inside the latent, else -100."""
        key = (height, width, device)
        if key not in self._masks:
            windows = self.unfold(checkerboard.anchor_mask(height, width))[0].T  # (L, w^2)
            both = windows[:, :, None] * windows[:, None, :]
            self._masks[key] = torch.where(both == 0, -100.0, 0.0).to(device)
        return self._masks[key]

    def forward(self, anchors: Tensor) -> Tensor:
        B, C, H, W = anchors.shape
        L, window = H * W, self.window_size**2
        tokens = self.norm1(anchors.reshape(B, C, L).transpose(1, 2))
        q, k, v = self.qkv_proj(tokens).reshape(B, H, W, 3, C).permute(3, 0, 4, 1, 2)
        windows = self.unfold(torch.cat([q, k, v], dim=1)).transpose(1, 2)  # (B, L, 3 C w^2)
        # channels split as (head_dim, heads): channel c belongs to head c % heads
        q, k, v = windows.reshape(B, L, 3, self.head_dim, self.num_heads, window).permute(2, 0, 1, 4, 5, 3)
        bias = self.relative_position_table[self.relative_position_index.view(-1)].view(window, window, -1)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias.permute(2, 0, 1)[None, None]
        attn = attn + self.attention_mask(H, W, anchors.device)[None, :, None]
        out = attn.softmax(dim=-1) @ v  # (B, L, heads, w^2, head_dim)
        side = self.window_size
        out = out.reshape(B, L, self.num_heads, side, side, self.head_dim).permute(0, 1, 3, 4, 2, 5)
        out = self.fusion(out.reshape(B * L, side, side, C).permute(0, 3, 1, 2)).reshape(B, L, C * 2)
        out = self.proj(out)
        out = out + self.mlp(self.norm2(out))
        return out.transpose(1, 2).reshape(B, C * 2, H, W)


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))
