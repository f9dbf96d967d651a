"""Images from disk or from installed packages, as 3-channel RGB float tensors in [0, 1]."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import lightning as L
import numpy as np
import png
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from rnic.augment import training_transform
from rnic.photos import SPLITS, SampleImages, split_by_fractions  # noqa: F401 (SampleImages: re-exported)
from rnic.synthetic import DeadLeaves, MixedDataset, synthetic_count

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".jp2")


def is_png16_color(path: str | Path) -> bool:
    """Whether `path` is a PNG of 16-bit RGB(A) samples, from its header (IHDR: bit depth, colour type)."""
    with open(path, "rb") as f:
        header = f.read(26)
    return header[:8] == b"\x89PNG\r\n\x1a\n" and header[24] == 16 and header[25] in (2, 6)


def read_png16(path: str | Path) -> np.ndarray:
    """A 16-bit RGB(A) PNG as a (H, W, C) uint16 array (Pillow would reduce it to 8 bits)."""
    # read(), not asDirect(): the latter shifts samples down by an sBIT chunk (10-, 12-bit sources).
    width, height, rows, info = png.Reader(filename=str(path)).read()
    channels = info["planes"]
    return np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, channels)


def read_array(path: str | Path) -> np.ndarray:
    """The samples of an image file; a `.npz` holds one array, named `data` (PyWavelets' images)."""
    if Path(path).suffix == ".npz":
        with np.load(path) as arrays:
            return arrays["data"]
    return read_png16(path) if is_png16_color(path) else iio.imread(path)


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a (3, H, W) float tensor in [0, 1].

    Grayscale is repeated to RGB, alpha is dropped, palettes are applied and
    16-bit samples are scaled by 65535.
    """
    try:
        array = read_array(path)
    except Exception as err:
        raise ValueError(f"cannot read image {str(path)!r}: {err}".splitlines()[0]) from None
    if array.dtype == np.uint8:
        scale = 255.0
    elif array.dtype == np.uint16:
        scale = 65535.0
    elif array.dtype.kind == "f":
        scale = 1.0
    else:
        raise ValueError(f"image {str(path)!r} has unsupported sample type {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"image {str(path)!r} has unsupported shape {array.shape}")
    channels = array.shape[-1]
    array = array[..., :1] if channels in (1, 2) else array[..., :3]
    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / scale)
    if not torch.isfinite(image).all():
        raise ValueError(f"image {str(path)!r} holds NaN or infinite samples")
    return image.permute(2, 0, 1).expand(3, -1, -1).clamp(0, 1).contiguous()


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    if path.suffix == ".npz":
        return tuple(read_array(path).shape[:2])
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as err:
        raise ValueError(f"cannot read image {str(path)!r}: {err}") from None
    return height, width


def find_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFolder:
    """Images under `root`, split by subfolders, list files, or fractions of one folder.

    Each of `train`/`val`/`test` is a path relative to `root`: a folder (searched
    recursively) or a `.txt` file whose lines name images or folders relative to
    `root / list_prefix` (Vimeo-90k's `sep_trainlist.txt`). `null` leaves the split empty.
    With `fractions`, all images under `root` are split deterministically instead.
    """

    def __init__(
        self,
        root: str,
        train: str | None = "train",
        val: str | None = "val",
        test: str | None = "test",
        fractions: Sequence[float] | None = None,
        seed: int = 0,
        list_prefix: str = "",
    ):
        self.root = Path(root).expanduser()
        self.parts = {"train": train, "val": val, "test": test}
        self.fractions = tuple(fractions) if fractions is not None else None
        self.seed = seed
        self.list_prefix = list_prefix

    def _resolve(self, split: str, part: str) -> list[Path]:
        path = self.root / part
        if path.is_file() and path.suffix == ".txt":
            base = self.root / self.list_prefix
            files = []
            for line in path.read_text().split():
                entry = base / line
                files.extend(find_images(entry) if entry.is_dir() else [entry])
            return files
        if not path.is_dir():
            raise FileNotFoundError(f"data.source.{split}: {str(path)!r} is not a folder or a .txt list")
        return find_images(path)

    def splits(self, names: Sequence[str] = SPLITS) -> dict[str, list[Path]]:
        """The listed images of each split in `names` (a split not asked for is not looked for)."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {str(self.root)!r} does not exist")
        if self.fractions is not None:
            files = find_images(self.root)
            if not files:
                raise FileNotFoundError(
                    f"data root {str(self.root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            return split_by_fractions(files, self.fractions, self.seed)
        return {s: self._resolve(s, p) if p is not None else [] for s, p in self.parts.items() if s in names}

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, parts={self.parts}, fractions={self.fractions})"


class ImageDataset(Dataset):
    """Decoded images, optionally transformed (random crops, flips, centre crops)."""

    def __init__(self, files: Sequence[Path], transform=None, repeats: int = 1, cache: bool = False):
        self.files = list(files)
        self.transform = transform
        self.repeats = repeats
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def __getitem__(self, index: int) -> torch.Tensor:
        index %= len(self.files)
        if self.cache is None:
            image = read_image(self.files[index])
        else:
            if index not in self.cache:
                self.cache[index] = read_image(self.files[index])
            image = self.cache[index]
        return self.transform(image) if self.transform is not None else image


def loader_workers(num_workers: int | str) -> int:
    """`auto`: one loader process per core this process may use, less one for the training itself."""
    if num_workers == "auto":
        return min(8, max(0, len(os.sched_getaffinity(0)) - 1))
    if not str(num_workers).isdigit():
        raise ValueError(f"data.num_workers={num_workers!r} must be a number >= 0 or auto")
    return int(num_workers)


class ImageDataModule(L.LightningDataModule):
    """Random crops with flips for training; whole images (or centre crops) for val and test.

    Whole images keep their size: they are padded to the codec's stride by the
    LightningModule, so val/test batches hold one image unless a crop is set.
    `train_repeats` visits each training image that many times per epoch (different
    random crops), so that a small set still makes epochs of many batches;
    `cache_images` keeps decoded images in memory (for small sets); `eval_test` lets train.py
    evaluate the best checkpoint on the test split (off for `data=sample`: its test split is for
    final figures only, measured with attack.py split=test). `augment` (none | flips | full) transforms
    training crops only; `synthetic_fraction` of each epoch's training images are drawn from `synthetic`
    (1: only synthetic images, as many as the photos' crops). `monitor` names splits (train, test)
    evaluated beside val at every validation, on their first `monitor_images` images (train: centre
    crops of data.patch_size), for curves of robust overfitting (logged as monitor/<split>/...).
    """

    def __init__(
        self,
        source,
        patch_size: int = 256,
        batch_size: int = 8,
        val_batch_size: int = 1,
        val_crop: int | None = None,
        test_crop: int | None = None,
        max_val_images: int | None = None,
        num_workers: int | str = 0,
        check_images: bool = True,
        train_repeats: int = 1,
        cache_images: bool = False,
        eval_test: bool = True,
        augment: str = "flips",
        synthetic: DeadLeaves | None = None,
        synthetic_fraction: float = 0.0,
        monitor: Sequence[str] = (),
        monitor_images: int = 4,
    ):
        super().__init__()
        self.monitor = tuple(monitor or ())
        if any(split not in ("train", "test") for split in self.monitor) or len(set(self.monitor)) < len(
            self.monitor
        ):
            raise ValueError(f"data.monitor={list(self.monitor)} may name train and test (once each)")
        self.monitor_images = int(monitor_images)
        self.eval_test = eval_test
        training_transform(int(patch_size), augment)  # refuses an unknown name now, not at the first batch
        self.augment = augment
        synthetic_count(0, synthetic_fraction)  # likewise a fraction outside [0, 1]
        if synthetic_fraction > 0 and synthetic is None:
            raise ValueError(
                f"data.synthetic_fraction={synthetic_fraction} needs data.synthetic (a generator)"
            )
        self.synthetic = synthetic
        self.synthetic_fraction = float(synthetic_fraction)
        self.source = source
        self.patch_size = int(patch_size)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.crops = {"val": val_crop, "test": test_crop}
        self.max_val_images = max_val_images
        self.num_workers = loader_workers(num_workers)
        self.check_images = check_images
        self._listing: dict[str, list[Path]] = {}
        self.train_repeats = int(train_repeats)
        self.cache_images = cache_images
        self.files: dict[str, list[Path]] = {}

    def prepare(self, splits: Sequence[str] = SPLITS) -> dict[str, list[Path]]:
        """List and check the images of `splits` (each once); errors name the file."""
        missing = [split for split in splits if split not in self._listing]
        if missing:
            self._listing.update(self.source.splits(missing))
        for split in splits:
            if split not in self.files:
                self.files[split] = self._check(split, self._listing.get(split, []))
        return {split: self.files[split] for split in splits}

    def _check(self, split: str, paths: list[Path]) -> list[Path]:
        need = {"train": self.patch_size, "val": self.crops["val"], "test": self.crops["test"]}[split]
        files = []
        for path in paths:
            if not self.check_images:
                files.append(path)
                continue
            try:
                height, width = image_size(path)
            except ValueError as err:
                log.warning("skipping %s", err)
                continue
            if need and (height < need or width < need):
                key = "data.patch_size" if split == "train" else f"data.{split}_crop"
                raise ValueError(f"image {str(path)!r} is {height}x{width}, smaller than {key}={need}")
            files.append(path)
        if paths and not files:
            raise ValueError(f"no readable {split} images in {self.source}")
        if split == "val" and self.max_val_images is not None:
            files = files[: self.max_val_images]
        return files

    def setup(self, stage: str | None = None) -> None:
        files = self.prepare()
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        for split in needed:
            if not files[split]:
                raise ValueError(f"data: the {split} split is empty in {self.source}")

    def dataset(self, split: str) -> Dataset:
        files = self.prepare((split,))[split]
        if split == "train":
            transform = training_transform(self.patch_size, self.augment)
            photos = ImageDataset(files, transform, repeats=self.train_repeats, cache=self.cache_images)
            if not self.synthetic_fraction:
                return photos
            count = synthetic_count(len(photos), self.synthetic_fraction)
            kept = photos if self.synthetic_fraction < 1 else None
            return MixedDataset(kept, self.synthetic, count, self.patch_size, transform, self.cache_images)
        crop = self.crops[split]
        return ImageDataset(files, v2.CenterCrop(crop) if crop else None, cache=self.cache_images)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        val = self._loader("val", self.val_batch_size, shuffle=False)
        if not self.monitor:
            return val
        return [val, *(self.monitored_loader(split) for split in self.monitor)]

    def monitored_loader(self, split: str) -> DataLoader:
        """The first `monitor_images` of `split`, as validation sees them (train: fixed centre crops)."""
        files = self.prepare((split,))[split][: self.monitor_images]
        crop = self.patch_size if split == "train" else self.crops[split]
        dataset = ImageDataset(files, v2.CenterCrop(crop) if crop else None, cache=self.cache_images)
        return DataLoader(dataset, batch_size=self.val_batch_size, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)


if __name__ == "__main__":  # python -m rnic.data download kodak
    from rnic.download import main

    main()
