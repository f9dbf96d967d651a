"""MLIC++ (Jiang, Yang, Zhai, Gao, Wang: "MLIC++: Linear Complexity Multi-Reference Entropy Modeling for
Learned Image Compression", ICML 2023 Neural Compression Workshop; TOMM 2025), written from the paper and
the authors' code (github.com/JiangWeibeta/MLIC, folder MLIC++), with their state dict layout: their
released checkpoints load strictly (`python attack.py model=mlicpp model.weights=<their file>`).

The latent y is coded in `slice_num` channel slices, each in two checkerboard passes (anchors, then
non-anchors). Each pass's Gaussian (scales, means) comes from the hyperprior and, after the first slice,
from the decoded slices (a channel context and a linear global attention across them); the non-anchors
add a local window attention over the decoded anchors and, after the first slice, a linear global
attention within the slice. A latent residual prediction corrects each pass's rounding.

The forward rounds y and z as the coder does (round(y - mean) + mean with a straight-through gradient),
so its reconstruction is the decoder's. The rounding goes through the entropy models' `quantize`, so that
rnic's attack proxies (noise, skip) replace it as they do in CompressAI's zoo codecs.
"""

from __future__ import annotations

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.ops import quantize_ste
from torch import Tensor, nn

from rnic.models import checkerboard
from rnic.models.mlicpp_layers import (
    RELEASES,
    AnalysisTransform,
    ChannelContext,
    EntropyParameters,
    HyperAnalysis,
    HyperSynthesis,
    LatentResidualPrediction,
    LinearGlobalInterContext,
    LinearGlobalIntraContext,
    LocalContext,
    SynthesisTransform,
)
from rnic.models.rans import coder_tables


class StraightThroughRounding:
    """An entropy model's `quantize` with one more mode, "ste": round(x - means) + means, gradient 1."""

    def quantize(self, inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
        if mode == "ste":
            return quantize_ste(inputs - means) + means
        return super().quantize(inputs, mode, means)


class RoundingEntropyBottleneck(StraightThroughRounding, EntropyBottleneck):
    pass


class RoundingGaussianConditional(StraightThroughRounding, GaussianConditional):
    pass


class MLICPlusPlus(CompressionModel):
    """MLIC++ with widths `N` (transforms, z) and `M` (y), `slice_num` channel slices of y (of at least 32
    channels each: the global inter-slice attention has one head per 32 channels), the local context's
    window `context_window`, and the authors' checkpoint generation `release` (2023 or 2024)."""

    downsampling_factor = 64
    # The lambdas of the authors' released checkpoints by quality (their README's table, 2023 release;
    # their 2024 checkpoint is one model).
    lambdas = {
        "mse": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483),
        "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50),
    }
    weights_source = (
        "the authors publish their checkpoints on PKU Disk and Google Drive only "
        "(github.com/JiangWeibeta/MLIC, README): download one and pass model.weights=<file> "
        "(model.release=2023 for their table of six MSE and six MS-SSIM models, 2024 for their update)"
    )

    def __init__(
        self, N: int = 192, M: int = 320, slice_num: int = 10, context_window: int = 5, release=2024
    ):
        super().__init__()
        slice_ch = M // slice_num
        if slice_ch * slice_num != M or slice_ch < 32:
            raise ValueError(
                f"model.slice_num={slice_num} does not fit model.M={M}: slices of M / slice_num channels, "
                f"a whole number of at least 32"
            )
        if str(release) not in map(str, RELEASES):
            raise ValueError(f"model.release={release} is not one of the authors' releases: {RELEASES}")
        self.N, self.M, self.slice_num, self.slice_ch = N, M, slice_num, slice_ch
        release = int(release)

        self.entropy_bottleneck = RoundingEntropyBottleneck(N)
        self.g_a = AnalysisTransform(N, M)
        self.g_s = SynthesisTransform(N, M, release)
        self.h_a = HyperAnalysis(M, N)
        self.h_s = HyperSynthesis(M, N)
        self.gaussian_conditional = RoundingGaussianConditional(None)

        def per_slice(make, first=True):  # the authors' lists hold None where slice 0 has no such context
            return nn.ModuleList(make(i) if i or first else None for i in range(slice_num))

        self.local_context = per_slice(lambda i: LocalContext(slice_ch, context_window))
        self.channel_context = per_slice(lambda i: ChannelContext(slice_ch * i, slice_ch), first=False)
        self.global_inter_context = per_slice(
            lambda i: LinearGlobalInterContext(slice_ch * i, slice_ch * 2, slice_ch * i // 32), first=False
        )
        self.global_intra_context = per_slice(lambda i: LinearGlobalIntraContext(slice_ch), first=False)
        self.entropy_parameters_anchor = per_slice(
            lambda i: EntropyParameters(M * 2 + (slice_ch * 6 if i else 0), slice_ch * 2)
        )
        self.entropy_parameters_nonanchor = per_slice(
            lambda i: EntropyParameters(M * 2 + (slice_ch * 10 if i else slice_ch * 2), slice_ch * 2)
        )
        self.lrp_anchor = per_slice(
            lambda i: LatentResidualPrediction(M + (i + 1) * slice_ch, slice_ch, release)
        )
        self.lrp_nonanchor = per_slice(
            lambda i: LatentResidualPrediction(M + (i + 1) * slice_ch, slice_ch, release)
        )

    # The multi-reference ladder, shared by forward, compress and decompress -----------------------------

    def _decode_slices(self, hyper_params: Tensor, code) -> tuple[Tensor, Tensor, Tensor]:
        """y_hat from the hyperprior's output, slice by slice, anchors before non-anchors.

        `code(index, half, scales, means)` returns the rounded half (`half` "anchor" or "nonanchor", the
        parameters zero outside it): from y in forward and compress, from the bitstream in decompress.
        Returns y_hat and the scales and means of all of y (for the forward's likelihoods).
        """
        hyper_means = hyper_params.chunk(2, 1)[1]
        decoded, scales, means = [], [], []
        for i in range(self.slice_num):
            if i == 0:
                anchor_input = hyper_params
            else:
                previous = torch.cat(decoded, dim=1)
                inter = self.global_inter_context[i](previous)
                channel = self.channel_context[i](previous)
                anchor_input = torch.cat([inter, channel, hyper_params], dim=1)
            scales_a, means_a = map(
                checkerboard.anchor, self.entropy_parameters_anchor[i](anchor_input).chunk(2, 1)
            )
            anchor = code(i, "anchor", scales_a, means_a)
            lrp = self.lrp_anchor[i](torch.cat([hyper_means, *decoded, anchor], dim=1))
            anchor = anchor + checkerboard.anchor(lrp)

            local = self.local_context[i](anchor)
            if i == 0:
                nonanchor_input = torch.cat([local, hyper_params], dim=1)
            else:
                intra = self.global_intra_context[i](decoded[-1], anchor)
                nonanchor_input = torch.cat([local, intra, inter, channel, hyper_params], dim=1)
            params = self.entropy_parameters_nonanchor[i](nonanchor_input).chunk(2, 1)
            scales_n, means_n = map(checkerboard.nonanchor, params)
            y_hat_slice = anchor + code(i, "nonanchor", scales_n, means_n)
            lrp = self.lrp_nonanchor[i](torch.cat([hyper_means, *decoded, y_hat_slice], dim=1))
            decoded.append(y_hat_slice + checkerboard.nonanchor(lrp))
            scales.append(scales_a + scales_n)
            means.append(means_a + means_n)
        return torch.cat(decoded, dim=1), torch.cat(scales, dim=1), torch.cat(means, dim=1)

    def _slice(self, y: Tensor, index: int) -> Tensor:
        return y[:, index * self.slice_ch : (index + 1) * self.slice_ch]

    def _round_z(self, z: Tensor) -> Tensor:
        """round(z - median) + median as the coder does, in the bottleneck's (C, 1, B h w) layout (where a
        proxy's per-image noise expects it)."""
        C, B = z.shape[1], z.shape[0]
        flat = z.transpose(0, 1).reshape(C, 1, -1)
        rounded = self.entropy_bottleneck.quantize(flat, "ste", self.entropy_bottleneck._get_medians())
        return rounded.reshape(C, B, *z.shape[2:]).transpose(0, 1)

    # CompressAI's interface ------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> dict:
        y = self.g_a(x)
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        hyper_params = self.h_s(self._round_z(z))

        def code(index, half, scales, means):
            keep = getattr(checkerboard, half)
            rounded = self.gaussian_conditional.quantize(keep(self._slice(y, index)), "ste", means)
            return keep(rounded)  # zero outside the half, whatever a proxy added there

        y_hat, scales, means = self._decode_slices(hyper_params, code)
        y_likelihoods = torch.cat(
            [
                self.gaussian_conditional(self._slice(y, i), self._slice(scales, i), self._slice(means, i))[1]
                for i in range(self.slice_num)
            ],
            dim=1,
        )
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    def compress(self, x: Tensor) -> dict:
        """One y stream per image (all slices and passes in the authors' order) and one z stream."""
        y = self.g_a(x)
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        y_strings = []
        for image in range(x.shape[0]):
            symbols, indexes = [], []

            def code(index, half, scales, means, image=image, symbols=symbols, indexes=indexes):
                squeeze = getattr(checkerboard, f"squeeze_{half}")
                values = squeeze(self._slice(y[image : image + 1], index))
                scales, means = squeeze(scales), squeeze(means)
                rounded = self.gaussian_conditional.quantize(values, "symbols", means)
                symbols.extend(rounded.reshape(-1).tolist())
                indexes.extend(self.gaussian_conditional.build_indexes(scales).reshape(-1).tolist())
                return getattr(checkerboard, f"unsqueeze_{half}")(rounded + means)

            self._decode_slices(self.h_s(z_hat[image : image + 1]), code)
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(symbols, indexes, *coder_tables(self.gaussian_conditional))
            y_strings.append(encoder.flush())
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    def decompress(self, strings: list, shape) -> dict:
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        y_hats = []
        for image, y_string in enumerate(strings[0]):
            decoder = RansDecoder()
            decoder.set_stream(y_string)

            def code(index, half, scales, means, decoder=decoder):
                squeeze = getattr(checkerboard, f"squeeze_{half}")
                scales, means = squeeze(scales), squeeze(means)
                indexes = self.gaussian_conditional.build_indexes(scales).reshape(-1).tolist()
                values = decoder.decode_stream(indexes, *coder_tables(self.gaussian_conditional))
                rounded = torch.tensor(values, dtype=means.dtype, device=means.device).reshape(means.shape)
                return getattr(checkerboard, f"unsqueeze_{half}")(rounded + means)

            y_hats.append(self._decode_slices(self.h_s(z_hat[image : image + 1]), code)[0])
        return {"x_hat": self.g_s(torch.cat(y_hats))}
