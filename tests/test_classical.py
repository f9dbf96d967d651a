"""Classical reference coders (imagecodecs) through the real attack.py pipeline."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rnic import rd
from rnic.classical import FORMATS, ClassicalCodec, to_uint8
from rnic.coding import compress_decompress
from rnic.evaluation import evaluate_robustness
from rnic.training import train
from tests.conftest import compose_config


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_rate_is_the_size_of_the_file_written(photos, tmp_path, fmt):
    codec = ClassicalCodec(fmt, quality=40)
    x_hat, bpp = compress_decompress(codec, photos)
    (strings,) = codec.compress(photos)["strings"]
    for i, data in enumerate(strings):
        path = tmp_path / f"{i}.{fmt}"
        path.write_bytes(data)
        assert bpp[i].item() == path.stat().st_size * 8 / (192 * 192)
    assert (rd.psnr(x_hat, photos) > 20).all()


def test_a_jpeg_file_decodes_to_the_same_image_with_another_reader(photos, tmp_path):
    codec = ClassicalCodec("jpeg", quality=60)
    x_hat, _ = compress_decompress(codec, photos[:1])
    path = tmp_path / "image.jpg"
    path.write_bytes(codec.compress(photos[:1])["strings"][0][0])
    pillow = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
    assert (x_hat[0] - pillow).abs().max() <= 2 / 255  # two IDCT implementations, same file


def test_a_target_rate_picks_the_highest_quality_within_it(photos):
    codec = ClassicalCodec("webp", target_bpp=0.8)
    _, bpp = compress_decompress(codec, photos)
    assert (bpp <= 0.8).all()
    for i in range(photos.shape[0]):  # one quality step up would exceed the target
        data, quality = codec.encode(codec_input := to_uint8(photos[i]))
        assert data == codec.encode_image(codec_input, quality) and codec.last_choice["quality"][i] == quality
        above = quality + 1
        assert above > 100 or 8 * len(codec.encode_image(codec_input, above)) / (192 * 192) > 0.8


def jpeg_cfg(tmp_path, *overrides):
    return compose_config(
        tmp_path, "model=jpeg", "model.quality=50", "data.val_crop=192", "max_images=2", *overrides,
        config_name="attack",
    )  # fmt: skip


def test_transferred_images_and_gradient_free_attacks_run_on_a_classical_coder(tmp_path):
    (mean,) = evaluate_robustness(jpeg_cfg(tmp_path / "square", "attack=square", "attack.queries=20"))
    results = json.loads((tmp_path / "square" / "results.json").read_text())
    assert mean["psnr_adv"] < mean["psnr_clean"] and len(results["images"]) == 2
    source = tmp_path / "square"
    evaluate_robustness(jpeg_cfg(tmp_path / "source", "attack=none", "attack_run.save_images=true"))
    (replayed,) = evaluate_robustness(
        jpeg_cfg(tmp_path / "replay", f"attack_run.load_from={tmp_path / 'source'}")
    )
    assert replayed["psnr_adv"] == pytest.approx(replayed["psnr_clean"]) and source.is_dir()


@pytest.mark.parametrize("attack", ["attack=auto", "attack=apgd", "attack=linf"])
def test_a_gradient_attack_on_a_classical_coder_is_refused(tmp_path, attack):
    with pytest.raises(ValueError, match="model=jpeg is a classical coder without a gradient"):
        evaluate_robustness(jpeg_cfg(tmp_path, attack))
    assert not (tmp_path / "results.json").exists()


def test_bad_settings_and_training_are_refused(tiny_cfg):
    with pytest.raises(ValueError, match="model.quality=0 is out of range for jpeg"):
        ClassicalCodec("jpeg", quality=0)
    with pytest.raises(ValueError, match="model.codec.format='bpg' is unknown"):
        ClassicalCodec("bpg")
    cfg = tiny_cfg("model=jpeg")
    with pytest.raises(ValueError, match="model=jpeg is a classical reference coder"):
        train(cfg)
