"""Rate and distortion of CompressAI codecs: padding to the codec's stride, the estimated rate,
distortion metrics and the vulnerability index, each defined once here."""

from __future__ import annotations

import functools
import inspect
import math
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

# CompressAI and torchmetrics are imported where they are used: report.py reads results through this
# module and starts in half the time without them (importing compressai alone takes ~3 s).

DEFAULT_STRIDE = 64  # for a codec that does not say; the zoo codecs with a hyperprior downsample by 2**6


@functools.cache
def ms_ssim_min_side() -> int:
    """The smallest side MS-SSIM takes as torchmetrics computes it by default (5 scales, an 11-px window):
    it refuses images whose side // (scales - 1)**2 is not above kernel - 1."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    defaults = inspect.signature(multiscale_structural_similarity_index_measure).parameters
    kernel, scales = defaults["kernel_size"].default, len(defaults["betas"].default)
    return kernel * max(1, scales - 1) ** 2  # 176


def __getattr__(name: str):
    if name == "MS_SSIM_MIN_SIDE":  # a module constant, computed on first use (torchmetrics' import)
        return ms_ssim_min_side()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stride(codec: nn.Module) -> int:
    """How far the codec downsamples: inputs are padded to a multiple of it."""
    return int(getattr(codec, "downsampling_factor", DEFAULT_STRIDE))


def padding(
    height: int, width: int, multiple: int = DEFAULT_STRIDE
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The padding of an image of this size to a multiple of `multiple` (centred, as CompressAI's evaluation
    does), and the unpadding that undoes it."""
    from compressai.ops import compute_padding

    return compute_padding(height, width, min_div=multiple)


def pad(x: Tensor, multiple: int = DEFAULT_STRIDE) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Zero-pad to a multiple of `multiple` (`padding`); also the unpad."""
    pads, unpadding = padding(x.shape[-2], x.shape[-1], multiple)
    return F.pad(x, pads, mode="constant", value=0), unpadding


def unpad(x: Tensor, unpadding: tuple[int, int, int, int]) -> Tensor:
    return F.pad(x, unpadding)


def estimated_bpp(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Bits per pixel of each image under the entropy model (what the loss minimises)."""
    bits = sum(-torch.log2(lk).flatten(1).sum(1) for lk in likelihoods.values())
    return bits / num_pixels


def mse(x_hat: Tensor, target: Tensor) -> Tensor:
    return (x_hat - target).square().flatten(1).mean(1)


def has_ms_ssim(x: Tensor) -> bool:
    """Whether MS-SSIM is defined for images of this size."""
    return min(x.shape[-2:]) >= ms_ssim_min_side()


def ms_ssim(x_hat: Tensor, target: Tensor) -> Tensor:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    return multiscale_structural_similarity_index_measure(x_hat, target, data_range=1.0, reduction="none")


def psnr(x_hat: Tensor, target: Tensor) -> Tensor:
    """PSNR per image in dB, peak 1; +inf for identical images (as torchmetrics gives)."""
    return -10 * torch.log10(mse(x_hat, target))


def vulnerability_index(x_hat_adv: Tensor, x_hat: Tensor, x_adv: Tensor, x: Tensor) -> Tensor:
    """Chen & Ma's VI per image: 10 log10(MSE(x^_adv, x^) / MSE(x_adv, x)) in dB.

    NaN where it is not a finite number: an unperturbed input (nothing was measured) or a
    reconstruction that did not move at all (-inf). Means skip NaN, so that no degenerate image can
    make a codec look robust (or win a best-checkpoint monitor).
    """
    vi = 10 * torch.log10(mse(x_hat_adv, x_hat) / mse(x_adv, x))
    return torch.where(torch.isfinite(vi), vi, torch.full_like(vi, torch.nan))


NEGATIVE_VI = (
    "a negative VI: the attacked reconstruction is closer to the clean one than the attacked input is to "
    "the source (the codec absorbed the perturbation, common on weak codecs)"
)


def mean_or_none(values) -> float | None:
    """The mean of the values that are not None (undefined figures), or None if there are none."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def spread(values, resamples: int = 2000, seed: int = 0) -> dict | None:
    """Mean, median, standard deviation (n - 1) and a 95% bootstrap interval of the mean (percentiles of
    `resamples` means of the images drawn with replacement, seeded) of the values that are not None;
    None if there are none. Over a few images one image can carry the mean: the median and the
    interval say how much."""
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(values):
        return None
    draws = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    low, high = np.percentile(values[draws].mean(1), [2.5, 97.5])
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "ci95": [float(low), float(high)],
        "n": len(values),
    }


def spread_text(figures: dict | None, digits: int = 2) -> str:
    """`spread`'s figures in one phrase: 'mean 21.27 (median 21.10, std 0.85, 95% CI 20.61 to 21.98, n 8)'."""
    if figures is None:
        return "n/a"
    mean, median, std, (low, high) = (figures[k] for k in ("mean", "median", "std", "ci95"))
    return (
        f"mean {mean:.{digits}f} (median {median:.{digits}f}, std {std:.{digits}f}, "
        f"95% CI {low:.{digits}f} to {high:.{digits}f}, n {figures['n']})"
    )


def finite_or_none(value) -> float | None:
    """A figure as written to JSON and tables: None (null, n/a) where it is not finite."""
    value = float(value)
    return value if math.isfinite(value) else None


def rate_distortion(
    x_hat: Tensor, likelihoods: dict[str, Tensor], target: Tensor, lmbda: float, metric: str, num_pixels: int
) -> dict[str, Tensor]:
    """Per-image loss = lmbda * D + bpp, D = 255^2 * MSE or 1 - MS-SSIM (CompressAI's convention)."""
    bpp = estimated_bpp(likelihoods, num_pixels)
    err = mse(x_hat, target)
    distortion = 255**2 * err if metric == "mse" else 1 - ms_ssim(x_hat, target)
    return {"loss": lmbda * distortion + bpp, "bpp": bpp, "mse": err, "distortion": distortion}


@contextmanager
def evaluating(module: nn.Module):
    """Within the block, `module` in eval mode; after it, every submodule in the mode it had (a wrapper's
    own flag may differ from its codec's: restoring the wrapper's would flip the codec)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def forward_padded(codec: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor], int]:
    """The codec's forward on an image padded to its stride: (x_hat cropped, likelihoods, pixels)."""
    x_padded, unpadding = pad(x, stride(codec))
    out = codec(x_padded)
    return unpad(out["x_hat"], unpadding), out["likelihoods"], x.shape[-2] * x.shape[-1]


def eval_metrics() -> MetricCollection:
    """An epoch's PSNR (per image, then averaged, as codec papers report it), MS-SSIM and VI."""
    from torchmetrics import MeanMetric, MetricCollection
    from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure, PeakSignalNoiseRatio

    return MetricCollection(
        {
            "psnr": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)),
            "ms_ssim": MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0),
            "vi": MeanMetric(nan_strategy="ignore"),
        }
    )
