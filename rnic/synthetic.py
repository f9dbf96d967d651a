"""Synthetic training images: dead leaves (occluding disks of power-law sizes), generated on the fly."""

from __future__ import annotations

import math

import numpy as np
import torch
from kornia.filters import gaussian_blur2d
from torch.utils.data import Dataset


class DeadLeaves:
    """Dead-leaves images: opaque disks of uniformly random colours dropped front to back until they
    cover the image. Radii follow the density r^-3 on [rmin, rmax] (in pixels), the scale-invariant law
    of natural images' occlusions, so that crops at any scale look alike. `texture` adds to each disk a
    sinusoidal grating of that amplitude (random frequency, orientation and phase); `blur` blurs each
    image with a Gaussian of standard deviation drawn uniformly in [0, blur] pixels. Image `index` of
    `seed` is always the same image.
    """

    def __init__(
        self,
        rmin: float = 2.0,
        rmax: float = 64.0,
        texture: float = 0.0,
        blur: float = 0.0,
        seed: int = 0,
        max_disks: int = 20000,
    ):
        if not 0 < rmin < rmax:
            raise ValueError(f"data.synthetic.rmin={rmin} and rmax={rmax} must satisfy 0 < rmin < rmax")
        if texture < 0 or blur < 0:
            raise ValueError(f"data.synthetic.texture={texture} and blur={blur} must be >= 0")
        self.rmin, self.rmax = float(rmin), float(rmax)
        self.texture, self.blur = float(texture), float(blur)
        self.seed, self.max_disks = int(seed), int(max_disks)

    def radii(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` radii of density proportional to r^-3 on [rmin, rmax] (inverse of its CDF)."""
        u = torch.rand(count, generator=generator, dtype=torch.float64)
        low, high = self.rmin**-2, self.rmax**-2
        return (low - u * (low - high)).pow(-0.5).float()

    def image(self, index: int, size: int) -> torch.Tensor:
        """Image `index`: a (3, size, size) tensor in [0, 1]."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
        out = np.zeros((3, size, size), dtype=np.float32)
        covered = np.zeros((size, size), dtype=bool)
        drawn = 0
        while drawn < self.max_disks and not covered.all():
            count = min(256, self.max_disks - drawn)
            radius = self.radii(count, generator).numpy()
            centre = (torch.rand(count, 2, generator=generator) * size).numpy()
            colour = torch.rand(count, 3, generator=generator).numpy()
            grating = self._gratings(count, generator)
            for k in range(count):  # front to back: a disk shows only where no earlier disk lies
                self._paint(
                    out, covered, centre[k], radius[k], colour[k], None if grating is None else grating[k]
                )
            drawn += count
        if not covered.all():  # what no disk reached lies on one last leaf
            out[:, ~covered] = torch.rand(3, 1, generator=generator).numpy()
        image = torch.from_numpy(out)[None].clamp(0, 1)
        if self.blur > 0:
            sigma = float(torch.rand(1, generator=generator)) * self.blur
            if sigma > 0.1:
                side = 2 * math.ceil(3 * sigma) + 1
                image = gaussian_blur2d(image, (side, side), (sigma, sigma), border_type="reflect")
        return image[0].clamp(0, 1)

    def _paint(self, out, covered, centre, radius, colour, grating) -> None:
        """One disk on the pixels (centres at half-integers) of its bounding box that it is first to cover."""
        size = covered.shape[0]
        y0, y1 = max(0, int(centre[0] - radius)), min(size, int(centre[0] + radius) + 1)
        x0, x1 = max(0, int(centre[1] - radius)), min(size, int(centre[1] + radius) + 1)
        if y0 >= y1 or x0 >= x1:
            return
        y = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        x = np.arange(x0, x1, dtype=np.float32)[None] + 0.5
        new = ((y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2) & ~covered[y0:y1, x0:x1]
        if not new.any():
            return
        values = colour[:, None]
        if grating is not None:
            frequency, angle, phase = grating
            wave = np.sin(2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
            values = values + self.texture * wave[new][None]
        out[:, y0:y1, x0:x1][:, new] = values
        covered[y0:y1, x0:x1] |= new

    def _gratings(self, count: int, generator: torch.Generator) -> np.ndarray | None:
        """Per disk: frequency (cycles per pixel, log-uniform in [1/32, 1/3]), orientation, phase."""
        if self.texture == 0:
            return None
        frequency = torch.exp(
            torch.empty(count).uniform_(math.log(1 / 32), math.log(1 / 3), generator=generator)
        )
        angle = torch.rand(count, generator=generator) * math.pi
        phase = torch.rand(count, generator=generator) * 2 * math.pi
        return torch.stack([frequency, angle, phase], 1).numpy()

    def __repr__(self) -> str:
        return (
            f"DeadLeaves(rmin={self.rmin}, rmax={self.rmax}, texture={self.texture}, blur={self.blur}, "
            f"seed={self.seed})"
        )


class MixedDataset(Dataset):
    """Training crops of photos with synthetic images added: the first `len(photos)` indices are the
    photos', the next `synthetic_count` are synthetic images of `size`, each index always the same image;
    `transform` (augmentation) applies to both; `cache` keeps the generated images (about 0.1-0.4 s each
    at 128x128 on one core) for later epochs."""

    def __init__(
        self,
        photos: Dataset | None,
        synthetic: DeadLeaves,
        synthetic_count: int,
        size: int,
        transform,
        cache: bool = False,
    ):
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.photos = photos
        self.synthetic = synthetic
        self.synthetic_count = int(synthetic_count)
        self.size = int(size)
        self.transform = transform

    def __len__(self) -> int:
        return (len(self.photos) if self.photos is not None else 0) + self.synthetic_count

    def __getitem__(self, index: int) -> torch.Tensor:
        photos = len(self.photos) if self.photos is not None else 0
        if index < photos:
            return self.photos[index]
        index -= photos
        if self.cache is None:
            image = self.synthetic.image(index, self.size)
        else:
            if index not in self.cache:
                self.cache[index] = self.synthetic.image(index, self.size)
            image = self.cache[index]
        return self.transform(image) if self.transform is not None else image


def synthetic_count(photo_crops: int, fraction: float) -> int:
    """How many synthetic images make `fraction` of an epoch that holds `photo_crops` photo crops
    (all photo crops' count when fraction is 1: an epoch as long as the photos' one)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"data.synthetic_fraction={fraction} must lie in [0, 1]")
    if fraction == 1:
        return photo_crops
    return round(photo_crops * fraction / (1 - fraction))
