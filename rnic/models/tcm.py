"""LIC-TCM: Liu, Sun & Katto, "Learned Image Compression with Mixed Transformer-CNN Architectures", CVPR 2023.

Analysis and synthesis transforms of parallel Transformer-CNN mixture blocks (half the channels through a
residual CNN block, half through a Swin window-attention block), a Swin hyperprior, and a channel-wise
autoregressive entropy model (Minnen & Singh 2020) whose mean and scale networks each open with a Swin
attention block (SWAtten). Written from the paper and the authors' code (github.com/jmliu206/LIC_TCM,
models/tcm.py); modules and attributes keep their names, so that their checkpoints
(`{"state_dict": ...}`, trained with N=64 or 128 and M=320) load strictly through `model.weights=`.

Their code fixes some widths as numbers (hyperprior 192 channels, entropy networks 224 and 128, SWAtten
128 channels, heads of 32 and 16 channels, windows of 8 and 4 pixels): here they are arguments with those
defaults, so that tiny instances can be built. Where the authors pad a latent map that is at most one
window wide (which their code cannot attend for the sizes it pads images to), this model attends the map as
it is: images must be padded to a multiple of `downsampling_factor` (128 for the defaults).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import (
    AttentionBlock,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv1x1,
    conv3x3,
    subpel_conv3x3,
)
from compressai.models import CompressionModel
from compressai.ops import quantize_ste
from torch import Tensor, nn

from rnic.attacks.proxy import is_proxied
from rnic.models.rans import coder_tables
from rnic.models.swin import SwinPair, TransformerBlock

# Lagrange multipliers of the authors' released MSE checkpoints (N=64), by quality 1..6 (their README).
LAMBDAS = {"mse": (0.0025, 0.0035, 0.0067, 0.0130, 0.0250, 0.0500)}


class TransformerConvBlock(nn.Module):
    """The TCM block: a 1x1 convolution splits the channels into a CNN half (residual block) and a
    Transformer half ((shifted-)window attention); a second 1x1 convolution fuses them, added residually.
    The authors' `ConvTransBlock`."""

    def __init__(self, dim: int, head_dim: int, window_size: int, drop_path_rate: float, shifted: bool):
        super().__init__()
        self.dim = dim
        self.conv1_1 = conv1x1(2 * dim, 2 * dim)
        self.conv1_2 = conv1x1(2 * dim, 2 * dim)
        self.trans_block = TransformerBlock(dim, head_dim, window_size, drop_path_rate, shifted)
        self.conv_block = ResidualBlock(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        conv_x, trans_x = torch.split(self.conv1_1(x), (self.dim, self.dim), dim=1)
        conv_x = self.conv_block(conv_x) + conv_x
        trans_x = self.trans_block(trans_x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv1_2(torch.cat((conv_x, trans_x), dim=1))


class SwinAttention(AttentionBlock):
    """SWAtten: Cheng et al.'s attention block whose mask branch runs on a Swin pair, between 1x1
    convolutions that squeeze the channels to `inner_dim` and back. The authors' `SWAtten`."""

    def __init__(self, dim: int, inner_dim: int, head_dim: int, window_size: int):
        super().__init__(N=inner_dim)
        self.non_local_block = SwinPair(inner_dim, head_dim, window_size, drop_path_rate=0.0)
        self.in_conv = conv1x1(dim, inner_dim)
        self.out_conv = conv1x1(inner_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_conv(x)
        out = self.conv_a(x) * torch.sigmoid(self.conv_b(self.non_local_block(x)))
        return self.out_conv(out + x)


def entropy_network(in_channels: int, widths: Sequence[int], out_channels: int) -> nn.Sequential:
    """Three 3x3 convolutions with GELUs between: the networks that predict a slice's means, scales and
    latent residual."""
    first, second = widths
    return nn.Sequential(
        conv3x3(in_channels, first),
        nn.GELU(),
        conv3x3(first, second),
        nn.GELU(),
        conv3x3(second, out_channels),
    )


def mixture_stage(count: int, dim: int, head_dim: int, window: int, rates: Sequence[float]) -> list:
    """`count` TCM blocks, alternating window and shifted-window attention."""
    return [TransformerConvBlock(dim, head_dim, window, rates[i], shifted=i % 2 == 1) for i in range(count)]


class TCM(CompressionModel):
    """LIC-TCM. `N` is half the channels of the transforms (the paper's C / 2: 64 small, 96 middle, 128
    large), `M` the channels of y, coded in `num_slices` slices, each conditioned on at most
    `max_support_slices` earlier ones (-1: all). `config` holds the number of TCM blocks of each stage
    (three analysis, three synthesis stages; the hyperprior reuses the first and the fourth), `head_dim` their
    attention heads' widths.
    """

    lambdas = LAMBDAS
    weights_source = (
        "the authors publish their checkpoints on Google Drive only (github.com/jmliu206/LIC_TCM, README): "
        "download one and pass model.weights=<file>"
    )

    def __init__(
        self,
        N: int = 128,
        M: int = 320,
        num_slices: int = 5,
        max_support_slices: int = 5,
        config: Sequence[int] = (2, 2, 2, 2, 2, 2),
        head_dim: Sequence[int] = (8, 16, 32, 32, 16, 8),
        drop_path_rate: float = 0.0,
        window_size: int = 8,
        hyper_channels: int = 192,
        hyper_head_dim: int = 32,
        hyper_window_size: int = 4,
        attention_dim: int = 128,
        attention_head_dim: int = 16,
        entropy_widths: Sequence[int] = (224, 128),
    ):
        super().__init__()
        config, head_dim = list(config), list(head_dim)
        if len(config) != 6 or len(head_dim) != 6:
            raise ValueError(f"model.config={config} and model.head_dim={head_dim} need 6 entries each")
        if M % num_slices:
            raise ValueError(f"model.M={M} is not divisible by model.num_slices={num_slices}")
        for key, width, heads in (
            ("model.head_dim", N, head_dim),
            ("model.hyper_head_dim", N, [hyper_head_dim]),
            ("model.attention_head_dim", attention_dim, [attention_head_dim]),
        ):
            if any(width % head for head in heads):
                raise ValueError(
                    f"{key}={heads if len(heads) > 1 else heads[0]}: heads must divide {width} channels"
                )
        self.N, self.M = N, M
        self.num_slices = num_slices
        self.max_support_slices = max_support_slices
        self.window_size, self.hyper_window_size = window_size, hyper_window_size
        # The authors' stochastic depth: each stage's i-th block takes the i-th rate of the linear ramp.
        rates = torch.linspace(0, drop_path_rate, sum(config)).tolist()

        def stage(count: int, index: int) -> list:
            return mixture_stage(count, N, head_dim[index], window_size, rates)

        self.g_a = nn.Sequential(
            ResidualBlockWithStride(3, 2 * N, 2),
            *stage(config[0], 0),
            ResidualBlockWithStride(2 * N, 2 * N, 2),
            *stage(config[1], 1),
            ResidualBlockWithStride(2 * N, 2 * N, 2),
            *stage(config[2], 2),
            conv3x3(2 * N, M, stride=2),
        )
        self.g_s = nn.Sequential(
            ResidualBlockUpsample(M, 2 * N, 2),
            *stage(config[3], 3),
            ResidualBlockUpsample(2 * N, 2 * N, 2),
            *stage(config[4], 4),
            ResidualBlockUpsample(2 * N, 2 * N, 2),
            *stage(config[5], 5),
            subpel_conv3x3(2 * N, 3, 2),
        )
        no_drop = [0.0] * max(config)

        def hyper_stage(count: int) -> list:
            return mixture_stage(count, N, hyper_head_dim, hyper_window_size, no_drop)

        self.h_a = nn.Sequential(
            ResidualBlockWithStride(M, 2 * N, 2),
            *hyper_stage(config[0]),
            conv3x3(2 * N, hyper_channels, stride=2),
        )
        self.h_mean_s, self.h_scale_s = (
            nn.Sequential(
                ResidualBlockUpsample(hyper_channels, 2 * N, 2),
                *hyper_stage(config[3]),
                subpel_conv3x3(2 * N, M, 2),
            )
            for _ in range(2)
        )
        slice_channels = M // num_slices
        support = [M + slice_channels * self.support_count(i) for i in range(num_slices)]
        self.atten_mean, self.atten_scale = (
            nn.ModuleList(
                nn.Sequential(SwinAttention(c, attention_dim, attention_head_dim, window_size))
                for c in support
            )
            for _ in range(2)
        )
        self.cc_mean_transforms, self.cc_scale_transforms = (
            nn.ModuleList(entropy_network(c, entropy_widths, slice_channels) for c in support)
            for _ in range(2)
        )
        self.lrp_transforms = nn.ModuleList(
            entropy_network(c + slice_channels, entropy_widths, slice_channels) for c in support
        )
        self.entropy_bottleneck = EntropyBottleneck(hyper_channels)
        self.gaussian_conditional = GaussianConditional(None)

    @property
    def downsampling_factor(self) -> int:
        """Image sides must be multiples of this: y (1/16) and the hyperprior (1/32) tile into windows."""
        return math.lcm(64, 16 * self.window_size, 32 * self.hyper_window_size)

    def support_count(self, slice_index: int) -> int:
        """How many earlier slices condition slice `slice_index`."""
        if self.max_support_slices < 0:
            return slice_index
        return min(slice_index, self.max_support_slices)

    def slice_parameters(
        self, index: int, y_hat_slices: list[Tensor], latent_means: Tensor, latent_scales: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(means, scales, mean support) of slice `index` from the hyperprior and the decoded slices."""
        support = y_hat_slices[: self.support_count(index)]
        mean_support = self.atten_mean[index](torch.cat([latent_means, *support], dim=1))
        means = self.cc_mean_transforms[index](mean_support)
        scale_support = self.atten_scale[index](torch.cat([latent_scales, *support], dim=1))
        scales = self.cc_scale_transforms[index](scale_support)
        return means, scales, mean_support

    def refine(self, index: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        """Latent residual prediction: add a correction in (-0.5, 0.5) to the quantised slice."""
        residual = self.lrp_transforms[index](torch.cat([mean_support, y_hat_slice], dim=1))
        return y_hat_slice + 0.5 * torch.tanh(residual)

    def forward(self, x: Tensor) -> dict:
        """Likelihoods from the entropy models (noisy in training); the reconstruction from y and z rounded
        around their means with straight-through gradients, as the decoder rounds them (the authors' mixed
        quantisation). Under rnic's quantisation proxies the reconstruction takes the proxy's values."""
        y = self.g_a(x)
        z = self.h_a(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        if not is_proxied(self.entropy_bottleneck):
            medians = self.entropy_bottleneck._get_medians()
            z_hat = quantize_ste(z - medians) + medians
        latent_means, latent_scales = self.h_mean_s(z_hat), self.h_scale_s(z_hat)
        y_hat_slices, y_likelihoods = [], []
        for index, y_slice in enumerate(y.chunk(self.num_slices, 1)):
            means, scales, mean_support = self.slice_parameters(
                index, y_hat_slices, latent_means, latent_scales
            )
            y_hat_slice, likelihoods = self.gaussian_conditional(y_slice, scales, means)
            if not is_proxied(self.gaussian_conditional):
                y_hat_slice = quantize_ste(y_slice - means) + means
            y_hat_slices.append(self.refine(index, mean_support, y_hat_slice))
            y_likelihoods.append(likelihoods)
        x_hat = self.g_s(torch.cat(y_hat_slices, dim=1))
        return {"x_hat": x_hat, "likelihoods": {"y": torch.cat(y_likelihoods, dim=1), "z": z_likelihoods}}

    def compress(self, x: Tensor) -> dict:
        """One y stream per image (its slices in order, each channel-major) and one z stream per image."""
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        latent_means, latent_scales = self.h_mean_s(z_hat), self.h_scale_s(z_hat)
        symbols = [[] for _ in range(len(x))]
        indexes = [[] for _ in range(len(x))]
        y_hat_slices = []
        for index, y_slice in enumerate(y.chunk(self.num_slices, 1)):
            means, scales, mean_support = self.slice_parameters(
                index, y_hat_slices, latent_means, latent_scales
            )
            slice_indexes = self.gaussian_conditional.build_indexes(scales)
            slice_symbols = self.gaussian_conditional.quantize(y_slice, "symbols", means)
            for image in range(len(x)):
                symbols[image].extend(slice_symbols[image].reshape(-1).tolist())
                indexes[image].extend(slice_indexes[image].reshape(-1).tolist())
            y_hat_slices.append(self.refine(index, mean_support, slice_symbols + means))
        y_strings = []
        for image_symbols, image_indexes in zip(symbols, indexes, strict=True):
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(
                image_symbols, image_indexes, *coder_tables(self.gaussian_conditional)
            )
            y_strings.append(encoder.flush())
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    def decompress(self, strings: list, shape) -> dict:
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        latent_means, latent_scales = self.h_mean_s(z_hat), self.h_scale_s(z_hat)
        decoders = []
        for y_string in strings[0]:
            decoders.append(RansDecoder())
            decoders[-1].set_stream(y_string)
        tables = coder_tables(self.gaussian_conditional)
        y_hat_slices = []
        for index in range(self.num_slices):
            means, scales, mean_support = self.slice_parameters(
                index, y_hat_slices, latent_means, latent_scales
            )
            slice_indexes = self.gaussian_conditional.build_indexes(scales)
            decoded = [
                decoder.decode_stream(slice_indexes[image].reshape(-1).tolist(), *tables)
                for image, decoder in enumerate(decoders)
            ]
            slice_symbols = torch.tensor(decoded, dtype=torch.float32, device=means.device).view(means.shape)
            y_hat_slice = self.gaussian_conditional.dequantize(slice_symbols, means)
            y_hat_slices.append(self.refine(index, mean_support, y_hat_slice))
        x_hat = self.g_s(torch.cat(y_hat_slices, dim=1)).clamp_(0, 1)
        return {"x_hat": x_hat}
