"""Classical image coders (JPEG, WebP, JPEG 2000, JPEG XL, through `imagecodecs`) behind CompressAI's
interface, as references for the learned codecs: the same attack.py pipeline codes them for real.

They have no gradient: only transferred adversarial images (`attack_run.load_from`) and gradient-free
attacks (`attack=square`, `attack=none`) apply to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import imagecodecs
import numpy as np
import torch
from torch import Tensor, nn

# Format name -> (encoder, decoder, quality range, encoder options). The rate grows with the level
# (the quality setting) for each of them; WebP is lossless unless told otherwise.
FORMATS = {
    "jpeg": (imagecodecs.jpeg8_encode, imagecodecs.jpeg8_decode, (1, 100), {}),
    "webp": (imagecodecs.webp_encode, imagecodecs.webp_decode, (1, 100), {"lossless": False}),
    "jpeg2000": (imagecodecs.jpeg2k_encode, imagecodecs.jpeg2k_decode, (1, 100), {}),
    "jpegxl": (imagecodecs.jpegxl_encode, imagecodecs.jpegxl_decode, (1, 100), {}),
}


def to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, as an image file holds it."""
    return np.ascontiguousarray(
        (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    )


class ClassicalCodec(nn.Module):
    """A classical coder at a fixed `quality`, or per image the quality whose real rate is the largest
    not above `target_bpp` (a reference matched to a learned codec's bpp)."""

    downsampling_factor = 1  # whole images: no padding

    def __init__(self, format: str = "jpeg", quality: int = 75, target_bpp: float | None = None):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"model.codec.format={format!r} is unknown; choose one of: {', '.join(FORMATS)}")
        low, high = FORMATS[format][2]
        if not low <= int(quality) <= high:
            raise ValueError(f"model.quality={quality} is out of range for {format}; choose {low}..{high}")
        if target_bpp is not None and not target_bpp > 0:
            raise ValueError(f"model.target_bpp={target_bpp} must be > 0")
        self.format = format
        self.quality = int(quality)
        self.target_bpp = target_bpp
        self.register_buffer("_device", torch.zeros(()), persistent=False)  # where results are returned
        self.last_choice: dict[str, list] = {}

    def encode_image(self, image: np.ndarray, quality: int) -> bytes:
        encode, _, _, options = FORMATS[self.format]
        return bytes(encode(np.ascontiguousarray(image), level=quality, **options))

    def encode(self, image: np.ndarray) -> tuple[bytes, int]:
        """The image's file and the quality it was coded at."""
        if self.target_bpp is None:
            return self.encode_image(image, self.quality), self.quality
        # The rate grows with the quality: bisect for the highest quality within the target.
        pixels = image.shape[0] * image.shape[1]
        low, high = FORMATS[self.format][2]
        best, chosen = self.encode_image(image, low), low  # the lowest quality if none is within
        while low <= high:
            middle = (low + high) // 2
            data = self.encode_image(image, middle)
            if 8 * len(data) / pixels <= self.target_bpp:
                best, chosen, low = data, middle, middle + 1
            else:
                high = middle - 1
        return best, chosen

    def decode(self, data: bytes) -> Tensor:
        array = FORMATS[self.format][1](data)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        return torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float() / 255

    def compress(self, x: Tensor) -> dict:
        """The files of a batch; `last_choice` keeps, per image, the quality used and whether the
        target rate was missed (no quality reaches a `target_bpp` below the lowest quality's rate)."""
        coded = [self.encode(to_uint8(image)) for image in x]
        pixels = x.shape[-2] * x.shape[-1]
        self.last_choice = {
            "quality": [quality for _, quality in coded],
            "target_missed": [
                self.target_bpp is not None and 8 * len(data) / pixels > self.target_bpp for data, _ in coded
            ],
        }
        return {"strings": [[data for data, _ in coded]], "shape": tuple(x.shape[-2:])}

    def decompress(self, strings: list[list[bytes]], shape) -> dict:
        x_hat = torch.stack([self.decode(data) for data in strings[0]]).to(self._device.device)
        return {"x_hat": x_hat}

    def forward(self, x: Tensor) -> dict:
        """Real coding: the reconstruction of the actual file (no gradient, no likelihoods)."""
        with torch.no_grad():
            x_hat = self.decompress(self.compress(x)["strings"], x.shape[-2:])["x_hat"]
        return {"x_hat": x_hat.to(x.dtype), "likelihoods": {}}

    def update(self, force: bool = False) -> bool:
        return False  # no entropy tables to build

    def aux_loss(self) -> Tensor:
        return self._device.new_zeros(())

    def extra_repr(self) -> str:
        target = f", target_bpp={self.target_bpp}" if self.target_bpp is not None else ""
        return f"format={self.format}, quality={self.quality}{target}"


REFERENCES = ("jpeg", "webp")
LABELS = {"jpeg": "JPEG", "webp": "WebP", "jpeg2000": "JPEG 2000", "jpegxl": "JPEG XL"}


def reference_line(learned_psnr: float | None, figures: dict[str, dict]) -> str:
    """The classical references' mean figures ({format: {"psnr", "bpp"}}) beside a learned codec's PSNR."""
    parts = []
    for name in REFERENCES:
        psnr, bpp = figures[name]["psnr"], figures[name]["bpp"]
        gain = "" if learned_psnr is None or psnr is None else f" (learned {learned_psnr - psnr:+.2f} dB)"
        parts.append(f"{LABELS[name]} {psnr:.2f} dB at {bpp:.3f} bpp{gain}")
    return "classical references at each image's learned rate: " + ", ".join(parts)


@torch.no_grad()
def matched_reference(x: Tensor, bpp: Sequence[float], formats: Sequence[str] = REFERENCES) -> dict:
    """Classical coders at a learned codec's rate, per image: each image of `x` (B, 3, H, W) coded at the
    highest quality whose real rate is within that image's `bpp` (one target for all images would let rate
    allocation decide). Returns, per format, the decoded PSNR and real bpp of each image."""
    from rnic import rd
    from rnic.coding import compress_decompress

    figures = {}
    for name in formats:
        psnr, rate = [], []
        for image, target in zip(x.cpu(), bpp, strict=True):
            decoded, real_bpp = compress_decompress(
                ClassicalCodec(name, target_bpp=float(target)), image[None]
            )
            psnr.append(rd.finite_or_none(rd.psnr(decoded, image[None])[0]))
            rate.append(float(real_bpp[0]))
        figures[name] = {"psnr": psnr, "bpp": rate}
    return figures
