"""Training data beyond the photos: dead leaves, mixing, augmentation (training crops only)."""

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchvision.transforms import v2

from rnic.augment import FullAugment, training_transform
from rnic.data import ImageDataModule, ImageFolder, read_image
from rnic.synthetic import DeadLeaves, MixedDataset, synthetic_count
from rnic.training import train
from tests.conftest import TINY, compose_config
from tests.test_data import write_png


def test_dead_leaves_are_deterministic_per_seed_and_index_and_in_range():
    generator = DeadLeaves(texture=0.2, blur=1.5)
    image = generator.image(3, 64)
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1 and image.std() > 0.05
    assert torch.equal(image, DeadLeaves(texture=0.2, blur=1.5).image(3, 64))
    assert not torch.equal(image, generator.image(4, 64))
    assert not torch.equal(image, DeadLeaves(texture=0.2, blur=1.5, seed=1).image(3, 64))
    flat = DeadLeaves().image(3, 64)  # flat disks: few distinct colours, every one a disk's
    assert len(torch.unique(flat.flatten(1), dim=1).T) < 64 * 64 / 8


def test_disk_radii_follow_the_inverse_cube_law():
    """The density of radii on log-spaced bins falls as r^-3 (uniform sizes would give slope 0)."""
    generator = DeadLeaves(rmin=1.0, rmax=100.0)
    radii = generator.radii(200_000, torch.Generator().manual_seed(0)).numpy()
    assert radii.min() >= 1.0 and radii.max() <= 100.0
    edges = np.geomspace(1.0, 50.0, 12)
    counts, _ = np.histogram(radii, edges)
    density = counts / np.diff(edges)
    centres = np.sqrt(edges[1:] * edges[:-1])
    slope = np.polyfit(np.log(centres), np.log(density), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.15)


def test_images_show_occlusion_at_many_scales():
    """Small disks are many, large ones few: the image holds regions of sizes over two decades."""
    image = DeadLeaves(rmin=1.0, rmax=64.0).image(0, 128)
    _, inverse, counts = torch.unique(image.flatten(1), dim=1, return_inverse=True, return_counts=True)
    assert counts.max() > 500 and (counts < 20).sum() > 50


def test_mixing_keeps_the_photos_and_adds_the_synthetic_share(tmp_path):
    for i in range(2):
        write_png(tmp_path / "train" / f"{i}.png", size=(48, 48), seed=i)
    source = ImageFolder(str(tmp_path), val=None, test=None)
    dm = ImageDataModule(
        source, patch_size=32, train_repeats=3, synthetic=DeadLeaves(), synthetic_fraction=0.5
    )
    dataset = dm.dataset("train")
    assert isinstance(dataset, MixedDataset) and len(dataset) == 12 and len(dataset.photos) == 6
    assert dataset[6].shape == (3, 32, 32)
    only = ImageDataModule(
        source, patch_size=32, train_repeats=3, synthetic=DeadLeaves(), synthetic_fraction=1.0
    )
    assert len(only.dataset("train")) == 6 and only.dataset("train").photos is None
    assert synthetic_count(6, 0.25) == 2 and synthetic_count(6, 0.0) == 0
    with pytest.raises(ValueError, match=r"data.synthetic_fraction=1.5 must lie in \[0, 1\]"):
        ImageDataModule(source, synthetic=DeadLeaves(), synthetic_fraction=1.5)
    with pytest.raises(ValueError, match="data.synthetic_fraction=0.5 needs data.synthetic"):
        ImageDataModule(source, synthetic_fraction=0.5)


def windows(image: torch.Tensor, size: int) -> torch.Tensor:
    """Every size x size window of `image`, as (N, 3, size, size)."""
    return image.unfold(1, size, 1).unfold(2, size, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size)


def test_each_augment_level_does_what_it_says():
    torch.manual_seed(0)
    image = torch.rand(3, 40, 40)
    plain = windows(image, 32)
    flipped = torch.cat([windows(image.flip(d), 32) for d in ([-1], [-2], [-1, -2])])

    def is_a_window(crop, candidates):
        return bool((candidates - crop).abs().amax(dim=(1, 2, 3)).min() == 0)

    none, flips, full = (training_transform(32, name) for name in ("none", "flips", "full"))
    assert all(is_a_window(none(image), plain) for _ in range(10))
    crops = [flips(image) for _ in range(20)]
    assert all(is_a_window(c, torch.cat([plain, flipped])) for c in crops)
    assert any(not is_a_window(c, plain) for c in crops)  # some were flipped
    augmented = [full(image) for _ in range(10)]
    assert all(c.shape == (3, 32, 32) and c.min() >= 0 and c.max() <= 1 for c in augmented)
    assert not any(is_a_window(c, torch.cat([plain, flipped])) for c in augmented)  # resized, jittered
    with pytest.raises(ValueError, match="data.augment='rotate' is not one of none, flips, full"):
        training_transform(32, "rotate")
    assert repr(full) == "FullAugment(patch_size=32)"


def test_augmentation_touches_training_crops_only(tmp_path):
    for split in ("train", "val", "test"):
        write_png(tmp_path / split / "a.png", size=(64, 64))
    dm = ImageDataModule(ImageFolder(str(tmp_path)), patch_size=32, val_crop=48, test_crop=48, augment="full")
    assert isinstance(dm.dataset("train").transform, FullAugment)
    for split in ("val", "test"):
        expected = v2.CenterCrop(48)(read_image(tmp_path / split / "a.png"))
        assert torch.equal(dm.dataset(split)[0], expected)


def test_real_configs_train_two_steps_on_augmented_dead_leaves_and_compose_photos(tmp_path):
    out = tmp_path / "run"
    cfg = compose_config(
        out, *TINY, "model.N=16", "model.M=24", "data=dead_leaves", "data.augment=full", "trainer.max_steps=2"
    )
    train(cfg)
    saved = json.loads((out / "final_metrics.json").read_text())
    assert saved["step"] == 2 and np.isfinite(saved["val/clean/loss"])
    assert cfg.data.synthetic_fraction == 1.0 and cfg.data.synthetic.texture > 0
    photos = instantiate(compose_config(tmp_path / "photos", "data=photos").data)
    names = [p.stem for p in photos.prepare(("train",))["train"]]
    assert len(names) == 15 and {"motorcycle_right", "page", "text"} <= set(names)
