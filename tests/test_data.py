import json
import logging

import imageio.v3 as iio
import numpy as np
import png
import pytest
import torch
from PIL import Image

from rnic.data import ImageDataModule, ImageFolder, SampleImages, read_image
from rnic.photos import EXTRA_TRAIN_IMAGES, TEST_IMAGES


def write_png(path, size=(64, 80), seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return path


def test_every_layout_becomes_rgb_float_in_unit_range(tmp_path):
    rng = np.random.default_rng(0)
    gray16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    iio.imwrite(tmp_path / "gray16.png", gray16)
    rgb16 = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    iio.imwrite(tmp_path / "rgb16.tiff", rgb16)
    # pypng writes 16-bit colour PNGs (neither imageio nor Pillow can); Pillow would read them as 8 bit.
    png.from_array(rgb16.reshape(20, -1), "RGB;16").save(tmp_path / "rgb16.png")
    rgba16 = rng.integers(0, 65536, (20, 30, 4), dtype=np.uint16)
    png.from_array(rgba16.reshape(20, -1), "RGBA;16").save(tmp_path / "rgba16.png")
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(gray, mode="L").convert("P").save(tmp_path / "palette.png")
    for suffix in ("webp", "bmp", "jpg"):
        iio.imwrite(tmp_path / f"rgb.{suffix}", rgba[..., :3])

    images = {p.name: read_image(p) for p in tmp_path.iterdir()}
    for name, image in images.items():
        assert image.shape == (3, 20, 30), name
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1, name
    assert torch.allclose(images["gray16.png"][1], torch.from_numpy(gray16 / 65535.0).float())
    assert torch.allclose(images["rgb16.tiff"], torch.from_numpy(rgb16 / 65535.0).float().permute(2, 0, 1))
    assert torch.equal(images["rgb16.png"], images["rgb16.tiff"])
    assert torch.allclose(
        images["rgba16.png"], torch.from_numpy(rgba16[..., :3] / 65535.0).float().permute(2, 0, 1)
    )
    assert torch.allclose(
        images["rgba.png"], torch.from_numpy(rgba[..., :3] / 255.0).float().permute(2, 0, 1)
    )
    assert torch.allclose(images["palette.png"][0], torch.from_numpy(gray / 255.0).float())
    assert torch.equal(images["rgb.bmp"], images["rgba.png"])  # lossless formats agree exactly


def test_sample_images_ship_with_packages_and_split_deterministically():
    paths = SampleImages.paths()
    assert len(paths) == 16 and all(p.is_file() for p in paths)
    a, b = SampleImages().splits(), SampleImages().splits()
    assert a == b
    assert len(a["val"]) == 4 and len(a["train"]) == 12
    assert not set(a["train"]) & set(a["val"])
    assert SampleImages(seed=1).splits()["val"] != a["val"]


VAL_PHOTOS = [
    "grace_hopper.jpg",
    "grass.png",
    "flower.jpg",
    "retina.jpg",
]  # every shipped choice was made on them


def test_the_test_split_holds_eight_photos_outside_train_and_val():
    splits = SampleImages().splits()
    assert [p.name for p in splits["val"]] == VAL_PHOTOS  # the shipped codecs' val split, unchanged
    assert [p.stem for p in splits["test"]] == list(TEST_IMAGES)
    assert len(splits["test"]) >= 8 and len(splits["train"]) == 12
    photos = {s: {read_image(p).mean().item() for p in splits[s]} for s in ("train", "val", "test")}
    assert not photos["test"] & (photos["train"] | photos["val"])  # different pixels, not just names
    with_extra = SampleImages(extra_train=True).splits()
    assert with_extra["train"][:12] == splits["train"] and len(with_extra["train"]) == 12 + len(
        EXTRA_TRAIN_IMAGES
    )
    assert with_extra["val"] == splits["val"] and with_extra["test"] == splits["test"]
    assert not {p.stem for p in with_extra["train"]} & {p.stem for p in splits["test"] + splits["val"]}


def test_test_photos_decode_to_rgb_crops_from_every_format():
    dm = ImageDataModule(SampleImages(), patch_size=128, test_crop=256)
    crops = [dm.dataset("test")[i] for i in range(len(TEST_IMAGES))]
    assert {p.suffix for p in dm.files["test"]} == {".png", ".npz", ".jp2", ".jpg"}
    for crop in crops:
        assert crop.shape == (3, 256, 256) and crop.min() >= 0 and crop.max() <= 1 and crop.std() > 0.005


def test_folder_with_split_subfolders(tmp_path):
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(count):
            write_png(tmp_path / split / "nested" / f"{i}.png", seed=i)
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    splits = ImageFolder(str(tmp_path)).splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 2, 1]


def test_one_folder_split_by_fractions(tmp_path):
    for i in range(10):
        write_png(tmp_path / f"img{i}.jpg", seed=i)
    splits = ImageFolder(str(tmp_path), fractions=[0.6, 0.2, 0.2], seed=5).splits()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(splits.values(), [])) == sorted(tmp_path.glob("*.jpg"))
    with pytest.raises(ValueError, match="fractions"):
        ImageFolder(str(tmp_path), fractions=[0.5, 0.2, 0.2]).splits()


def test_vimeo_list_layout(tmp_path):
    for seq in ("00001/0001", "00001/0002"):
        for frame in range(1, 4):
            write_png(tmp_path / "sequences" / seq / f"im{frame}.png", seed=frame)
    (tmp_path / "sep_trainlist.txt").write_text("00001/0001\n00001/0002\n")
    source = ImageFolder(
        str(tmp_path), train="sep_trainlist.txt", val=None, test=None, list_prefix="sequences"
    )
    assert len(source.splits()["train"]) == 6


def test_training_batches_are_random_crops_and_val_images_stay_whole(tmp_path):
    for i in range(4):
        write_png(tmp_path / "train" / f"{i}.png", size=(70, 90), seed=i)
    write_png(tmp_path / "val" / "a.png", size=(50, 60))
    write_png(tmp_path / "test" / "b.png", size=(50, 60))
    dm = ImageDataModule(ImageFolder(str(tmp_path)), patch_size=32, batch_size=2, train_repeats=3)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 6 and batches[0].shape == (2, 3, 32, 32)
    assert next(iter(dm.val_dataloader())).shape == (1, 3, 50, 60)


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(str(tmp_path / "absent")).splits()
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="data.source.val: .*val. is not a folder"):
        ImageFolder(str(tmp_path)).splits()
    (tmp_path / "val").mkdir()
    (tmp_path / "test").mkdir()
    dm = ImageDataModule(ImageFolder(str(tmp_path)))
    with pytest.raises(ValueError, match="the train split is empty"):
        dm.setup("fit")


def test_a_corrupt_image_among_good_ones_is_skipped_with_its_name(tmp_path, caplog):
    for i in range(2):
        write_png(tmp_path / "train" / f"{i}.png", seed=i)
    (tmp_path / "train" / "broken.png").write_bytes(b"\x89PNG garbage")
    with caplog.at_level(logging.WARNING):
        files = ImageDataModule(ImageFolder(str(tmp_path), val=None, test=None), patch_size=32).prepare()
    assert len(files["train"]) == 2
    assert "broken.png" in caplog.text


def test_only_corrupt_images_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable train images"):
        ImageDataModule(ImageFolder(str(tmp_path), val=None, test=None)).prepare()
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        read_image(tmp_path / "train" / "broken.jpg")


def test_an_image_smaller_than_the_patch_is_named(tmp_path):
    write_png(tmp_path / "train" / "big.png", size=(300, 300))
    write_png(tmp_path / "train" / "tiny.png", size=(100, 300))
    dm = ImageDataModule(ImageFolder(str(tmp_path), val=None, test=None), patch_size=256)
    with pytest.raises(ValueError, match=r"tiny.png' is 100x300, smaller than data.patch_size=256"):
        dm.prepare()


def test_non_finite_float_images_are_refused(tmp_path):
    data = np.full((8, 8, 3), np.nan, dtype=np.float32)
    iio.imwrite(tmp_path / "nan.tiff", data)
    with pytest.raises(ValueError, match="nan.tiff' holds NaN"):
        read_image(tmp_path / "nan.tiff")


def test_attack_py_split_test_codes_the_test_photos(tmp_path):
    from rnic.evaluation import evaluate_robustness
    from tests.conftest import compose_config

    out = tmp_path / "attack"
    cfg = compose_config(
        out, "split=test", "attack=none", "max_images=2", "data.test_crop=128", config_name="attack"
    )
    evaluate_robustness(cfg)
    results = json.loads((out / "results.json").read_text())
    assert [image["image"] for image in results["images"]] == list(TEST_IMAGES)[:2]
    psnr = [image["psnr_clean"] for image in results["images"]]
    assert results["spread"]["psnr_clean"]["median"] == pytest.approx(sum(psnr) / 2)  # median of two
    assert results["spread"]["psnr_clean"]["n"] == 2
