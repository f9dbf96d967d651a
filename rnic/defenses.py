"""Defences around a learned codec, and the defended codec an attack sees through (independent of Lightning).

A `DefendedCodec` is itself a module with CompressAI's interface (forward -> {x_hat, likelihoods},
compress / decompress, update, aux_loss, downsampling_factor), so every attack, the ensembles and the
real-bitstream figures work on it unchanged:

- image defences run in their listed order before encoding, and the two-way ones (`resize`,
  `random_transform`) undo themselves in reverse order after decoding;
- `self_ensemble` and `latent_clamp` act on the codec itself, wherever they are listed.

The forward pass is what an ADAPTIVE attacker differentiates: non-differentiable steps run for real in the
forward pass and pass a gradient by BPDA (JPEG: Pillow's libjpeg forward, kornia's differentiable JPEG
backward; bit depth: straight-through identity; median: a box filter of the same size; self-ensemble:
the chosen branch, the argmin held constant). Random defences draw per image, from generators seeded
from the global RNG (`rnic.attacks.rng`), so a seed reproduces them and an image's draw does not depend
on its batch mates; an attack averages its objective over `eot_samples` draws (EOT, see
`rnic.attacks.Attack.value`). compress() runs the real pipeline and writes the side information a decoder
needs (the random transform drawn, the self-ensemble's index) into a header stream that counts in the bpp.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import kornia
import numpy as np
import torch
from compressai.ops import compute_padding
from PIL import Image
from torch import Tensor, nn

from rnic import rd
from rnic.attacks import rng
from rnic.smoothing import CenterSmoothing, SmoothedCodec

# Where a checkpoint keeps latent_clamp's measured ranges (rnic checkpoints) or a ranges file keeps them.
RANGES_KEY = "latent_ranges"
RANGES_SUFFIX = ".latent_ranges.pt"
SELF_ENSEMBLE_BITS = 3  # the index of one of the 8 flips / rotations


# --- flips and 90-degree rotations (the dihedral group of the square) -----------------------------------


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


def bits_for(count: int) -> int:
    return max(0, math.ceil(math.log2(count))) if count > 1 else 0


def bpda(real: Tensor, approx: Tensor) -> Tensor:
    """The real values in the forward pass, the approximation's gradient in the backward pass."""
    return approx + (real - approx).detach()


# --- image defences ---------------------------------------------------------------------------------------


class ImageDefense(nn.Module):
    """One image operation before encoding (`encode`) and, for the two-way ones, after decoding (`decode`).

    `encode(x, generators)` returns (image, per-image parameters or None); parameters that the decoder
    needs take `bits(size)` bits each in the header.
    """

    name = "?"
    random = False

    def encode(self, x: Tensor, generators: list[torch.Generator] | None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def decode(self, x_hat: Tensor, params: Tensor | None, size: tuple[int, int]) -> Tensor:
        return x_hat

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(size)

    def bits(self, size: tuple[int, int]) -> int:
        return 0

    def check_size(self, size: tuple[int, int], stride: int) -> None:
        """Refuse an image size this defence cannot handle (with the codec's stride)."""

    def extra_repr(self) -> str:
        return ", ".join(
            f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_") and k != "training"
        )


def _jpeg_pillow(x: Tensor, quality: int) -> Tensor:
    """Real baseline JPEG (libjpeg via Pillow, 4:2:0) of each image's 8-bit samples."""
    out = []
    for image in x.detach().clamp(0, 1).cpu():
        array = (image * 255).round().byte().permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
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

    def fields(self, size) -> list[int]:
        """Sizes (counts of values) of the parameters: transform, row shift, column shift."""
        shifts = 2 * self.max_shift + 1
        return [len(shape_keeping(size)), shifts, shifts]

    def bits(self, size):
        return sum(bits_for(n) for n in self.fields(size))

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


# --- defences on the codec itself -------------------------------------------------------------------------


class SelfEnsemble(nn.Module):
    """Chen & Ma's geometric self-ensemble: code all 8 flips / rotations, keep the one whose decoded
    reconstruction (inverted) is closest (MSE) to the input, and send its index in 3 header bits."""

    name = "self_ensemble"
    random = False


def ranges_file(weights: str | Path) -> Path:
    """Where `ranges.py` stores the latent ranges of a weights file: a new file beside it (a weights file
    is never modified, so its SHA-256 stays the one runs recorded)."""
    return Path(f"{weights}{RANGES_SUFFIX}")


def read_latent_ranges(path: str | Path) -> dict:
    """The latent ranges of a ranges file, of the ranges file beside a weights file (`ranges_file`), or
    stored inside an rnic checkpoint (`rnic.latent_ranges`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"defense.latent_clamp.ranges_from={str(path)!r}: no such file")
    if ranges_file(path).is_file():
        path = ranges_file(path)
    stored = torch.load(path, map_location="cpu", weights_only=True)
    ranges = (stored.get("rnic") or {}).get(RANGES_KEY) if isinstance(stored, dict) else None
    if ranges is None and isinstance(stored, dict):
        ranges = stored.get(RANGES_KEY)
    if ranges is None:
        raise ValueError(
            f"defense.latent_clamp.ranges_from={str(path)!r} holds no latent ranges: measure them on clean "
            f"training images first, `python ranges.py model.weights={path}` (see docs)"
        )
    return {**ranges, "file": str(path), "inside_weights": RANGES_SUFFIX not in path.name}


class LatentClamp(nn.Module):
    """Chen & Ma's latent clamping: clamp each channel of y = g_a(x) to [low, high], the range measured on
    clean training images (`measure_latent_ranges`), widened by `margin` times its width.

    `ranges_from`: an rnic checkpoint (or a file written by `ranges.py`) holding the ranges; `low` and
    `high` give them directly. Without either, it is refused: a clamp to made-up ranges defends nothing.
    """

    name = "latent_clamp"
    random = False

    def __init__(
        self,
        ranges_from: str | None = None,
        low: Sequence[float] | None = None,
        high: Sequence[float] | None = None,
        margin: float = 0.0,
        weights: str | None = None,
    ):
        super().__init__()
        if low is None or high is None:
            if not ranges_from:
                raise ValueError(
                    "defense.latent_clamp.ranges_from is not set: latent_clamp needs the per-channel ranges "
                    "of y measured on clean training images (`python ranges.py model.weights=CKPT`)"
                )
            ranges = read_latent_ranges(ranges_from)
            if weights:
                check_ranges_match(ranges, weights)
            low, high = ranges["low"], ranges["high"]
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if low.shape != high.shape or low.dim() != 1 or not bool((low <= high).all()):
            raise ValueError("defense.latent_clamp: low and high must be per-channel ranges with low <= high")
        if not float(margin) >= 0:
            raise ValueError(f"defense.latent_clamp.margin={margin} must be >= 0")
        self.ranges_from = ranges_from
        self.margin = float(margin)
        width = high - low
        self.register_buffer("low", low - self.margin * width)
        self.register_buffer("high", high + self.margin * width)

    def clamp(self, y: Tensor) -> Tensor:
        shape = (1, -1, *[1] * (y.dim() - 2))
        return torch.maximum(torch.minimum(y, self.high.to(y).view(shape)), self.low.to(y).view(shape))

    @contextmanager
    def installed(self, codec: nn.Module):
        """Within the block, the codec's analysis transform g_a outputs clamped latents (forward and
        compress both go through it)."""
        handle = codec.g_a.register_forward_hook(lambda module, args, y: self.clamp(y))
        try:
            yield
        finally:
            handle.remove()


@torch.no_grad()
def measure_latent_ranges(codec: nn.Module, images) -> dict:
    """Per-channel min and max of y = g_a(x) over `images` (an iterable of (B, 3, H, W) or (3, H, W))."""
    low = high = None
    count = 0
    for x in images:
        x = x if x.dim() == 4 else x[None]
        y = codec.g_a(rd.pad(x, rd.stride(codec))[0])
        y_low, y_high = y.transpose(0, 1).flatten(1).amin(1), y.transpose(0, 1).flatten(1).amax(1)
        low = y_low if low is None else torch.minimum(low, y_low)
        high = y_high if high is None else torch.maximum(high, y_high)
        count += x.shape[0]
    if count == 0:
        raise ValueError("latent ranges need at least one image")
    return {"low": low.tolist(), "high": high.tolist(), "images": count}


def save_latent_ranges(path: str | Path, ranges: dict) -> Path:
    """Store `ranges` (with the `weights_sha256` they were measured on) as a ranges file of its own."""
    from rnic.io import atomic_write

    return atomic_write(Path(path), lambda tmp: torch.save({RANGES_KEY: ranges}, tmp))


def check_ranges_match(ranges: dict, weights: str | Path) -> None:
    """Ranges measured on other weights would clamp this codec's latents to another codec's ranges."""
    from rnic.config import file_sha256

    if ranges["inside_weights"] and Path(ranges["file"]).resolve() == Path(weights).resolve():
        return  # stored inside these very weights
    stored, actual = ranges.get("weights_sha256"), file_sha256(weights)
    if stored != actual:
        measured = f"weights with SHA-256 {stored[:16]}..." if stored else "weights it does not record"
        raise ValueError(
            f"defense.latent_clamp.ranges_from={ranges['file']!r} holds ranges measured on {measured}, "
            f"but model.weights={str(weights)!r} has SHA-256 {actual[:16]}...: measure them on these weights "
            f"(`python ranges.py model.weights={weights}`)"
        )


# --- the defended codec -----------------------------------------------------------------------------------

CLASSES = {
    "jpeg": JPEG, "blur": Blur, "median": Median, "bitdepth": BitDepth, "resize": Resize, "noise": Noise,
    "random_transform": RandomTransform, "self_ensemble": SelfEnsemble, "latent_clamp": LatentClamp,
    "center_smoothing": CenterSmoothing,
}  # fmt: skip


def _pack(fields: list[tuple[int, int]]) -> bytes:
    """(value, bits) fields, most significant first, in whole bytes (a stream grows by bytes)."""
    total = sum(bits for _, bits in fields)
    number = 0
    for value, bits in fields:
        number = (number << bits) | value
    size = math.ceil(total / 8)
    return (number << (8 * size - total)).to_bytes(size, "big")  # left-aligned, zero-padded


def _unpack(data: bytes, widths: list[int]) -> list[int]:
    number = int.from_bytes(data, "big") >> (8 * len(data) - sum(widths))
    values = []
    for bits in reversed(widths):
        values.append(number & ((1 << bits) - 1))
        number >>= bits
    return values[::-1]


class DefendedCodec(nn.Module):
    """`codec` behind `defenses` (a mapping name -> defence, in order, or a sequence), with CompressAI's
    interface. `eot_samples`: draws an attack averages over when a defence is random."""

    def __init__(
        self, codec: nn.Module, defenses: Mapping[str, nn.Module] | Sequence[nn.Module], eot_samples=8
    ):
        super().__init__()
        defenses = list(defenses.values()) if isinstance(defenses, Mapping) else list(defenses)
        if int(eot_samples) < 1:
            raise ValueError(f"attack.eot_samples={eot_samples} must be >= 1")
        self.codec = codec
        self.stages = nn.ModuleList([d for d in defenses if isinstance(d, ImageDefense)])
        self.ensemble = any(isinstance(d, SelfEnsemble) for d in defenses)
        clamps = [d for d in defenses if isinstance(d, LatentClamp)]
        self.clamp = clamps[0] if clamps else None
        if self.clamp is not None:
            if not hasattr(codec, "g_a"):
                raise ValueError(
                    f"defense.latent_clamp: {type(codec).__name__} has no analysis transform g_a"
                )
            channels = _latent_channels(codec)
            if channels is not None and channels != self.clamp.low.numel():
                raise ValueError(
                    f"defense.latent_clamp: the stored ranges have {self.clamp.low.numel()} channels, "
                    f"the codec's latent has {channels} (ranges of another codec?)"
                )
        self.names = [d.name for d in defenses]
        self.eot_samples = int(eot_samples)

    # CompressAI's interface ---------------------------------------------------------------------------

    @property
    def downsampling_factor(self) -> int:
        return 1  # any size: the codec's own padding happens inside, after the image defences

    @property
    def inner_stride(self) -> int:
        return rd.stride(self.codec)

    @property
    def random(self) -> bool:
        return any(stage.random for stage in self.stages)

    def __getattr__(self, name: str):
        if name == "context_prediction":  # autoregressive codecs are scored by real coding (rnic.attacks)
            return getattr(self._modules["codec"], name)
        return super().__getattr__(name)

    def update(self, scale_table=None, force: bool = False) -> bool:
        return (
            self.codec.update(force=force) if scale_table is None else self.codec.update(scale_table, force)
        )

    def aux_loss(self) -> Tensor:
        return self.codec.aux_loss()

    def check_size(self, size: tuple[int, int]) -> None:
        """Refuse an image size some defence cannot handle, before any image is coded."""
        size = tuple(size)
        for stage in self.stages:
            stage.check_size(size, self.inner_stride)
            size = stage.out_size(size)

    def header_bits(self, size: tuple[int, int]) -> int:
        bits = 0
        for stage in self.stages:
            bits += stage.bits(size)
            size = stage.out_size(size)
        return bits + (SELF_ENSEMBLE_BITS if self.ensemble else 0)

    @contextmanager
    def _clamped(self):
        if self.clamp is None:
            yield
        else:
            with self.clamp.installed(self.codec):
                yield

    def _pre(self, x: Tensor) -> tuple[Tensor, list, list]:
        generators = rng.image_generators(x.shape[0], x.device) if self.random else None
        params, sizes = [], []
        for stage in self.stages:
            sizes.append(tuple(x.shape[-2:]))
            x, p = stage.encode(x, generators)
            params.append(p)
        return x, params, sizes

    def _post(self, x_hat: Tensor, params: list, sizes: list) -> Tensor:
        for stage, p, size in zip(reversed(self.stages), reversed(params), reversed(sizes), strict=True):
            x_hat = stage.decode(x_hat, p, size)
        return x_hat

    def forward(self, x: Tensor) -> dict:
        size = tuple(x.shape[-2:])
        inner, params, sizes = self._pre(x)
        with self._clamped():
            if self.ensemble:
                x_hat, likelihoods = self._ensemble_forward(inner)
            else:
                x_hat, likelihoods, _ = rd.forward_padded(self.codec, inner)
        x_hat = self._post(x_hat, params, sizes)
        bits = self.header_bits(size)
        if bits:
            likelihoods = {**likelihoods, "header": torch.full((x.shape[0], 1), 2.0**-bits, device=x.device)}
        return {"x_hat": x_hat, "likelihoods": likelihoods}

    def _ensemble_forward(self, x: Tensor) -> tuple[Tensor, dict]:
        """All 8 branches; per image the one closest to its input (the choice held constant: BPDA)."""
        branches, errors = [], []
        for k in range(8):
            x_hat, likelihoods, _ = rd.forward_padded(self.codec, dihedral(x, k))
            x_hat = inverse_dihedral(x_hat, k)
            branches.append((x_hat, {n: lk.flatten(1) for n, lk in likelihoods.items()}))
            errors.append(rd.mse(x_hat.detach().clamp(0, 1), x.detach()))
        choice = torch.stack(errors).argmin(0)  # (B,)
        x_hat = torch.stack([b[0] for b in branches])[choice, torch.arange(x.shape[0])]
        likelihoods = {
            name: torch.stack([b[1][name] for b in branches])[choice, torch.arange(x.shape[0])]
            for name in branches[0][1]
        }
        return x_hat, likelihoods

    @torch.no_grad()
    def compress(self, x: Tensor) -> dict:
        size = tuple(x.shape[-2:])
        inner, params, sizes = self._pre(x)
        batch = x.shape[0]
        candidates = range(8) if self.ensemble else [0]
        best_err = torch.full((batch,), torch.inf)
        chosen = [0] * batch
        per_image: list = [None] * batch  # (strings of the image per stream, inner shape)
        with self._clamped():
            for k in candidates:
                image = dihedral(inner, k)
                padded, unpadding = rd.pad(image, self.inner_stride)
                encoded = self.codec.compress(padded)
                if self.ensemble:
                    decoded = self.codec.decompress(encoded["strings"], encoded["shape"])["x_hat"]
                    err = rd.mse(inverse_dihedral(rd.unpad(decoded, unpadding), k).clamp(0, 1), inner).cpu()
                else:
                    err = torch.zeros(batch)
                for i in range(batch):
                    if float(err[i]) < float(best_err[i]):
                        best_err[i], chosen[i] = err[i], k
                        per_image[i] = ([s[i] for s in encoded["strings"]], encoded["shape"])
        headers = []
        for i in range(batch):
            fields = []
            stage_size = size
            for stage, p in zip(self.stages, params, strict=True):
                if stage.bits(stage_size):
                    widths = [bits_for(n) for n in stage.fields(stage_size)]
                    fields += list(zip(p[i].tolist(), widths, strict=True))
                stage_size = stage.out_size(stage_size)
            if self.ensemble:
                fields.append((chosen[i], SELF_ENSEMBLE_BITS))
            headers.append(_pack(fields))
        streams = len(per_image[0][0])
        strings = [[per_image[i][0][j] for i in range(batch)] for j in range(streams)] + [headers]
        return {"strings": strings, "shape": {"size": size, "inner": [per_image[i][1] for i in range(batch)]}}

    @torch.no_grad()
    def decompress(self, strings: list, shape: dict) -> dict:
        size = tuple(shape["size"])
        sizes, stage_size = [], size
        for stage in self.stages:
            sizes.append(stage_size)
            stage_size = stage.out_size(stage_size)
        core_size = stage_size
        images, stage_params = [], [[] for _ in self.stages]
        for i, header in enumerate(strings[-1]):
            widths, owners = [], []
            for s, (stage, at) in enumerate(zip(self.stages, sizes, strict=True)):
                if stage.bits(at):
                    for n in stage.fields(at):
                        widths.append(bits_for(n))
                        owners.append(s)
            if self.ensemble:
                widths.append(SELF_ENSEMBLE_BITS)
                owners.append(-1)
            values = _unpack(header, widths)
            k = values[-1] if self.ensemble else 0
            for s in range(len(self.stages)):
                stage_params[s].append([v for v, o in zip(values, owners, strict=True) if o == s])
            decoded = self.codec.decompress([[stream[i]] for stream in strings[:-1]], shape["inner"][i])[
                "x_hat"
            ]
            h, w = transformed_size(core_size, k)
            _, unpadding = compute_padding(h, w, min_div=self.inner_stride)
            images.append(inverse_dihedral(rd.unpad(decoded, unpadding), k))
        x_hat = torch.cat(images)
        params = [
            torch.tensor(p, dtype=torch.long, device=x_hat.device) if stage.bits(at) else None
            for stage, p, at in zip(self.stages, stage_params, sizes, strict=True)
        ]
        return {"x_hat": self._post(x_hat, params, sizes).clamp(0, 1)}


def _latent_channels(codec: nn.Module) -> int | None:
    """The number of channels of y (M for the zoo codecs), read from g_a's last convolution."""
    convs = [m for m in codec.g_a.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not convs:
        return None
    last = convs[-1]
    return last.out_channels


def build_defenses(spec: Mapping | Sequence[str] | None) -> dict[str, nn.Module]:
    """Defences from a `defense=` config (name -> config with `_target_`, in order), from already built
    defences, or from a list of names with default settings. `none` (or nothing) is no defence."""
    from rnic.config import build  # Hydra, not Lightning

    if not spec:
        return {}
    if isinstance(spec, str):
        spec = [spec]
    items = spec.items() if isinstance(spec, Mapping) else [(name, {}) for name in spec]
    defenses = {}
    for name, entry in items:
        if name == "none" and not entry:
            continue
        if name not in CLASSES:
            raise ValueError(f"defense={name!r} is unknown; choose among: none, {', '.join(CLASSES)}")
        if isinstance(entry, nn.Module):
            defense = entry
        elif entry and "_target_" in entry:
            defense = build(entry)
        else:
            defense = CLASSES[name](**dict(entry or {}))
        if not isinstance(defense, CLASSES[name]):
            raise ValueError(
                f"defense.{name}._target_ builds a {type(defense).__name__}, not a {name} defence"
            )
        defenses[name] = defense
    return defenses


def defended(codec: nn.Module, spec, eot_samples: int = 8) -> nn.Module:
    """`codec` behind the defences of `spec` (see `build_defenses`), or `codec` itself without any.
    Center smoothing takes the codec alone (other defences would change what it certifies)."""
    defenses = build_defenses(spec)
    smoothing = [d for d in defenses.values() if isinstance(d, CenterSmoothing)]
    if smoothing and len(defenses) > 1:
        raise ValueError(
            f"defense={list(defenses)}: center_smoothing certifies the codec alone; use it alone"
        )
    if smoothing:
        return SmoothedCodec(codec, smoothing[0], eot_samples=eot_samples)
    return DefendedCodec(codec, defenses, eot_samples=eot_samples) if defenses else codec


def retarget(attack, codec: nn.Module):
    """A copy of `attack` (and of an ensemble's members) that attacks `codec` with the same settings."""
    clone = copy.copy(attack)
    clone.codec = codec
    if isinstance(getattr(attack, "members", None), dict):
        clone.members = {name: retarget(member, codec) for name, member in attack.members.items()}
    return clone
