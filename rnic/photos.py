"""Photos that ship inside installed packages (no download): data=sample's train, val and test splits."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Sequence
from pathlib import Path

SPLITS = ("train", "val", "test")

# Natural photos that ship inside installed packages: (package, path inside it, licence as the package
# states it). Sources and licences: docs/training.md#sample-photos-and-their-licences.
NONE_STATED = "no licence stated by the package"
SAMPLE_IMAGES = {
    "astronaut": ("skimage", "data/astronaut.png", "public domain (NASA)"),
    "brick": ("skimage", "data/brick.png", "CC0 1.0"),
    "camera": ("skimage", "data/camera.png", "CC0 1.0"),
    "chelsea": ("skimage", "data/chelsea.png", "CC0 1.0"),
    "coffee": ("skimage", "data/coffee.png", "CC0 1.0"),
    "grass": ("skimage", "data/grass.png", "CC0 1.0"),
    "gravel": ("skimage", "data/gravel.png", "CC0 1.0"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg", "public domain (NASA)"),
    "immunohistochemistry": ("skimage", "data/ihc.png", "no known copyright restrictions"),
    "moon": ("skimage", "data/moon.png", NONE_STATED),
    "motorcycle": ("skimage", "data/motorcycle_left.png", NONE_STATED),
    "retina": ("skimage", "data/retina.jpg", "CC0 1.0"),
    "rocket": ("skimage", "data/rocket.jpg", "public domain (SpaceX)"),
    "china": ("sklearn", "datasets/images/china.jpg", "CC BY 2.0, danielbuechele on Flickr"),
    "flower": ("sklearn", "datasets/images/flower.jpg", "CC BY 2.0, vultilion on Flickr"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", NONE_STATED),
}
# The test split: independent photos (none shows a scene of the 16 above), used only for final figures.
TEST_IMAGES = {
    "coins": ("skimage", "data/coins.png", "no known copyright restrictions (Brooklyn Museum)"),
    "clock_motion": ("skimage", "data/clock_motion.png", "public domain"),
    "cell": ("skimage", "data/cell.png", "CC0 1.0"),
    "aero": ("pywt", "data/aero.npz", NONE_STATED),
    "ascent": ("pywt", "data/ascent.npz", "public domain"),
    "nemo": ("glymur", "data/nemo.jp2", NONE_STATED),
    "luispedro": ("mahotas", "demos/data/luispedro.jpg", NONE_STATED),
    "nuclear": ("mahotas", "demos/data/nuclear.png", NONE_STATED),
}
# More training photos (`data=photos`): too small for a 256 crop, or a scene that the train split holds.
EXTRA_TRAIN_IMAGES = {
    "motorcycle_right": ("skimage", "data/motorcycle_right.png", NONE_STATED),
    "page": ("skimage", "data/page.png", NONE_STATED),
    "text": ("skimage", "data/text.png", "public domain (Wikipedia, File:Corner.png)"),
}


def package_files(images: dict[str, tuple[str, str, str]]) -> list[Path]:
    """The files of `images` inside their installed packages (found without importing them)."""
    paths = []
    for name, (package, inner, _) in images.items():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"sample image {name!r} needs the package {package!r}")
        path = Path(spec.submodule_search_locations[0]) / inner
        if not path.is_file():
            raise FileNotFoundError(f"sample image {name!r} is missing from {package}: {path}")
        paths.append(path)
    return paths


def split_by_fractions(files: Sequence[Path], fractions: Sequence[float], seed: int) -> dict:
    """A deterministic split of `files` into train/val/test by fractions (shuffled by `seed`)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"data.source.fractions={list(fractions)} must be three numbers >= 0 summing to 1")
    files = sorted(files)
    random.Random(seed).shuffle(files)
    n_val = round(fractions[1] * len(files))
    n_test = round(fractions[2] * len(files))
    n_train = len(files) - n_val - n_test
    return {
        "train": files[:n_train],
        "val": files[n_train : n_train + n_val],
        "test": files[n_train + n_val :],
    }


class SampleImages:
    """Photos shipped by installed packages (no download): train and val split the 16 of
    SAMPLE_IMAGES by `fractions`; test is TEST_IMAGES (plus any test fraction); `extra_train`
    adds EXTRA_TRAIN_IMAGES to train."""

    def __init__(
        self, fractions: Sequence[float] = (0.75, 0.25, 0.0), seed: int = 0, extra_train: bool = False
    ):
        self.fractions = tuple(fractions)
        self.seed = seed
        self.extra_train = extra_train

    @staticmethod
    def paths() -> list[Path]:
        return package_files(SAMPLE_IMAGES)

    def splits(self, names: Sequence[str] = SPLITS) -> dict[str, list[Path]]:
        splits = split_by_fractions(self.paths(), self.fractions, self.seed)
        if "test" in names:
            splits["test"] = splits["test"] + package_files(TEST_IMAGES)
        if self.extra_train and "train" in names:
            splits["train"] = splits["train"] + package_files(EXTRA_TRAIN_IMAGES)
        return splits

    @staticmethod
    def licences(extra_train: bool = False) -> dict[str, str]:
        """The licence of each photo of the splits (train, val, test; `extra_train`: data=photos's too), by
        name, for the model card."""
        images = {**SAMPLE_IMAGES, **TEST_IMAGES, **(EXTRA_TRAIN_IMAGES if extra_train else {})}
        return {name: licence for name, (_, _, licence) in images.items()}

    def __repr__(self) -> str:
        return f"SampleImages(fractions={self.fractions}, seed={self.seed}, extra_train={self.extra_train})"
