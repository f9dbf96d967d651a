"""Rate, distortion and real entropy coding for CompressAI codecs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.ops import compute_padding
from torch import Tensor, nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

STRIDE = 64  # the zoo codecs downsample by 2**6


def pad(x: Tensor, stride: int = STRIDE) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Zero-pad to a multiple of `stride` (centred, as CompressAI's evaluation does); also the unpad."""
    padding, unpadding = compute_padding(x.shape[-2], x.shape[-1], min_div=stride)
    return F.pad(x, padding, mode="constant", value=0), unpadding


def unpad(x: Tensor, unpadding: tuple[int, int, int, int]) -> Tensor:
    return F.pad(x, unpadding)


def estimated_bpp(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Bits per pixel of each image under the entropy model (what the loss minimises)."""
    bits = sum(-torch.log2(lk).flatten(1).sum(1) for lk in likelihoods.values())
    return bits / num_pixels


def mse(x_hat: Tensor, target: Tensor) -> Tensor:
    return (x_hat - target).square().flatten(1).mean(1)


def ms_ssim(x_hat: Tensor, target: Tensor) -> Tensor:
    return multiscale_structural_similarity_index_measure(x_hat, target, data_range=1.0, reduction="none")


def psnr(x_hat: Tensor, target: Tensor) -> Tensor:
    return -10 * torch.log10(mse(x_hat, target).clamp_min(1e-10))


def rate_distortion(
    x_hat: Tensor, likelihoods: dict[str, Tensor], target: Tensor, lmbda: float, metric: str, num_pixels: int
) -> dict[str, Tensor]:
    """Per-image loss = lmbda * D + bpp, D = 255^2 * MSE or 1 - MS-SSIM (CompressAI's convention)."""
    bpp = estimated_bpp(likelihoods, num_pixels)
    err = mse(x_hat, target)
    distortion = 255**2 * err if metric == "mse" else 1 - ms_ssim(x_hat, target)
    return {"loss": lmbda * distortion + bpp, "bpp": bpp, "mse": err, "distortion": distortion}


def forward_padded(codec: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor], int]:
    """The codec's forward on an image padded to its stride: (x_hat cropped, likelihoods, pixels)."""
    x_padded, unpadding = pad(x)
    out = codec(x_padded)
    return unpad(out["x_hat"], unpadding), out["likelihoods"], x.shape[-2] * x.shape[-1]


def stream_bytes(strings: list[list[bytes]], index: int) -> int:
    """Bytes of image `index` across all the codec's latent streams."""
    return sum(len(stream[index]) for stream in strings)


@torch.no_grad()
def code(codec: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Compress and decompress `x` with the real entropy coder: (decoded image, bpp per image).

    The bpp is exact (float64, on the CPU): bytes of all the image's streams * 8 / (H * W).
    """
    x_padded, unpadding = pad(x)
    encoded = codec.compress(x_padded)
    decoded = codec.decompress(encoded["strings"], encoded["shape"])
    x_hat = unpad(decoded["x_hat"], unpadding).clamp(0, 1)
    bits = [8 * stream_bytes(encoded["strings"], i) for i in range(x.shape[0])]
    return x_hat, torch.tensor(bits, dtype=torch.float64) / (x.shape[-2] * x.shape[-1])
