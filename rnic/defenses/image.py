"""Image defenses: one operation on the image before encoding and, for the two-way ones (`resize`,
`random_transform`), its inverse after decoding. Non-differentiable steps run for real in the forward pass
and pass a gradient by BPDA (JPEG: Pillow's libjpeg forward, kornia's differentiable JPEG backward; bit
depth: straight-through identity; median: a box filter of the same size). Random ones draw per image from
the generators they are given (`rnic.attacks.rng`)."""

from __future__ import annotations

import io
import math

import kornia
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from rnic.attacks import rng
from rnic.classical import to_uint8
from rnic.defenses.dihedral import dihedral, inverse_dihedral, shape_keeping


def bpda(real: Tensor, approx: Tensor) -> Tensor:
    """The real values in the forward pass, the approximation's gradient in the backward pass."""
    return approx + (real - approx).detach()


class ImageDefense(nn.Module):
    """One image operation before encoding (`encode`) and, for the two-way ones, after decoding (`decode`).

    `encode(x, generators)` returns (image, per-image parameters or None); the parameters the decoder
    needs are one value each of `fields(size)` counts, sent in the header (`rnic.defenses.header`).
    """

    name = "?"
    random = False

    def encode(self, x: Tensor, generators: list[torch.Generator] | None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def decode(self, x_hat: Tensor, params: Tensor | None, size: tuple[int, int]) -> Tensor:
        return x_hat

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(size)

    def fields(self, size: tuple[int, int]) -> list[int]:
        """Per image parameter the decoder needs, the count of values it takes (none: nothing to send)."""
        return []

    def check_size(self, size: tuple[int, int], stride: int) -> None:
        """Refuse an image size this defense cannot handle (with the codec's stride)."""

    def extra_repr(self) -> str:
        return ", ".join(
            f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_") and k != "training"
        )


def _jpeg_pillow(x: Tensor, quality: int) -> Tensor:
    """Real baseline JPEG (libjpeg via Pillow, 4:2:0) of each image's 8-bit samples."""
    out = []
    for image in x.detach().clamp(0, 1).cpu():
        buffer = io.BytesIO()
        Image.fromarray(to_uint8(image)).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert("RGB"))
        out.append(torch.from_numpy(decoded.copy()).permute(2, 0, 1))
    return (torch.stack(out).to(x.device, x.dtype)) / 255


class JPEG(ImageDefense):
    """JPEG at `quality` (1-100) before encoding: libjpeg forward, kornia's differentiable JPEG backward."""

    name = "jpeg"

    def __init__(self, quality: int = 75):
        super().__init__()
        if not (float(quality) == int(quality) and 1 <= int(quality) <= 100):
            raise ValueError(f"defense.jpeg.quality={quality} must be an integer in 1..100")
        self.quality = int(quality)

    def encode(self, x, generators):
        real = _jpeg_pillow(x, self.quality)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return real, None
        quality = torch.full((x.shape[0],), float(self.quality), device=x.device, dtype=x.dtype)
        approx = kornia.enhance.jpeg_codec_differentiable(x.clamp(0, 1), quality)
        return bpda(real, approx), None


class Blur(ImageDefense):
    """Gaussian blur of `sigma` pixels (kernel 2 * ceil(3 sigma) + 1, reflected borders); differentiable."""

    name = "blur"

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        if not float(sigma) > 0:
            raise ValueError(f"defense.blur.sigma={sigma} must be > 0")
        self.sigma = float(sigma)

    def encode(self, x, generators):
        k = 2 * math.ceil(3 * self.sigma) + 1
        # Reflection needs a kernel radius below the image side; a larger blur is flat anyway.
        k = min(k, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
        return kornia.filters.gaussian_blur2d(
            x, (k, k), (self.sigma, self.sigma), border_type="reflect"
        ), None


class Median(ImageDefense):
    """Median filter of `kernel` (odd) pixels; BPDA: a box filter of the same size in the backward pass
    (the median's own gradient reaches one pixel in kernel^2 and flips with the ordering)."""

    name = "median"

    def __init__(self, kernel: int = 3):
        super().__init__()
        if not (int(kernel) == kernel and kernel >= 3 and kernel % 2 == 1):
            raise ValueError(f"defense.median.kernel={kernel} must be an odd integer >= 3")
        self.kernel = int(kernel)

    def encode(self, x, generators):
        real = kornia.filters.median_blur(x.detach(), self.kernel)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return real, None
        return bpda(real, kornia.filters.box_blur(x, self.kernel, border_type="reflect")), None


class BitDepth(ImageDefense):
    """Reduce every sample to `bits` bits (1-8); BPDA: straight-through identity in the backward pass."""

    name = "bitdepth"

    def __init__(self, bits: int = 4):
        super().__init__()
        if not (int(bits) == bits and 1 <= bits <= 8):
            raise ValueError(f"defense.bitdepth.bits={bits} must be an integer in 1..8")
        self.depth = int(bits)

    def encode(self, x, generators):
        levels = 2**self.depth - 1
        return bpda(torch.round(x.clamp(0, 1) * levels) / levels, x), None


class Resize(ImageDefense):
    """Down-scale by `factor` (0 < factor <= 1, antialiased bilinear) before encoding, code the small image,
    and scale the decoded image back up (bilinear): less rate, and a low-pass on the perturbation."""

    name = "resize"

    def __init__(self, factor: float = 0.5):
        super().__init__()
        if not 0 < float(factor) <= 1:
            raise ValueError(f"defense.resize.factor={factor} must be in (0, 1]")
        self.factor = float(factor)

    def out_size(self, size):
        return tuple(max(1, round(s * self.factor)) for s in size)

    def check_size(self, size, stride):
        small = self.out_size(size)
        if min(small) < stride:
            raise ValueError(
                f"defense.resize.factor={self.factor} leaves a {small[0]}x{small[1]} image of a "
                f"{size[0]}x{size[1]} one, less than the codec's stride {stride}"
            )

    def encode(self, x, generators):
        small = self.out_size(x.shape[-2:])
        if small == tuple(x.shape[-2:]):
            return x, None
        return kornia.geometry.transform.resize(x, small, interpolation="bilinear", antialias=True), None

    def decode(self, x_hat, params, size):
        if tuple(x_hat.shape[-2:]) == tuple(size):
            return x_hat
        return kornia.geometry.transform.resize(x_hat, tuple(size), interpolation="bilinear")


class Noise(ImageDefense):
    """Additive Gaussian noise of `sigma` before encoding, clipped to [0, 1] (random: EOT)."""

    name = "noise"
    random = True

    def __init__(self, sigma: float = 0.02):
        super().__init__()
        if not float(sigma) > 0:
            raise ValueError(f"defense.noise.sigma={sigma} must be > 0")
        self.sigma = float(sigma)

    def encode(self, x, generators):
        noise = rng.randn(generators, tuple(x.shape[1:]), x)
        return (x + self.sigma * noise).clamp(0, 1), None


class RandomTransform(ImageDefense):
    """Song et al.'s two-way random transform: a random flip / quarter turn (all 8 for square images, the
    4 that keep the shape otherwise) and a random circular shift of up to `max_shift` pixels each way,
    applied before encoding and inverted exactly after decoding. The draw is sent in the header."""

    name = "random_transform"
    random = True

    def __init__(self, max_shift: int = 8):
        super().__init__()
        if not (int(max_shift) == max_shift and max_shift >= 0):
            raise ValueError(f"defense.random_transform.max_shift={max_shift} must be an integer >= 0")
        self.max_shift = int(max_shift)

    def fields(self, size):
        """Counts of values of the parameters: transform, row shift, column shift."""
        shifts = 2 * self.max_shift + 1
        return [len(shape_keeping(size)), shifts, shifts]

    def check_size(self, size, stride):
        if self.max_shift >= min(size):
            raise ValueError(
                f"defense.random_transform.max_shift={self.max_shift} is not below the image side {min(size)}"
            )

    def encode(self, x, generators):
        size = tuple(x.shape[-2:])
        counts = self.fields(size)
        draws = rng.rand(generators, (3,), x)  # per image: transform, row shift, column shift
        params = torch.stack([(draws[:, j] * n).long().clamp(max=n - 1) for j, n in enumerate(counts)], 1)
        keep = shape_keeping(size)
        out = []
        for image, (t, dy, dx) in zip(x, params.tolist(), strict=True):
            moved = dihedral(image, keep[t])
            out.append(torch.roll(moved, (dy - self.max_shift, dx - self.max_shift), dims=(-2, -1)))
        return torch.stack(out), params

    def decode(self, x_hat, params, size):
        keep = shape_keeping(tuple(size))
        out = []
        for image, (t, dy, dx) in zip(x_hat, params.tolist(), strict=True):
            back = torch.roll(image, (self.max_shift - dy, self.max_shift - dx), dims=(-2, -1))
            out.append(inverse_dihedral(back, keep[t]))
        return torch.stack(out)
