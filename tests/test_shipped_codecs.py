"""The CPU codecs shipped inside the package: they load offline through model.pretrained=true and code
the val photos to exactly the bitstreams their cards record."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from torchvision.transforms import v2

from rnic import rd
from rnic.codecs import SHIPPED, build_codec, qualities, rd_lambda, shipped_card, shipped_weights
from rnic.coding import compress_decompress
from rnic.config import attack_spec
from rnic.data import SampleImages, read_image
from rnic.evaluation.checks import check_card
from rnic.io import file_sha256
from tests.conftest import compose_config

ARCH = "bmshj2018_hyperprior_cpu"


def card_of(quality: int, arch: str = ARCH) -> dict:
    return json.loads(shipped_card(arch, "mse", quality).read_text())


@pytest.fixture(scope="module")
def val_crops() -> torch.Tensor:
    return torch.stack([v2.CenterCrop(256)(read_image(p)) for p in SampleImages().splits()["val"]])


@pytest.fixture(scope="module")
def crops_by_name() -> dict[str, torch.Tensor]:
    """The 256x256 centre crop of every val and test photo, by name."""
    splits = SampleImages().splits()
    return {p.stem: v2.CenterCrop(256)(read_image(p)) for p in splits["val"] + splits["test"]}


@pytest.mark.parametrize("quality", qualities(ARCH))
@pytest.mark.parametrize("arch", SHIPPED)
def test_shipped_weights_code_the_bitstreams_their_card_records(arch, quality, val_crops):
    card = card_of(quality, arch)
    assert file_sha256(shipped_weights(arch, "mse", quality)) == card["sha256"]
    assert rd_lambda("mse", quality, arch) == card["lmbda"]
    codec = build_codec(arch, quality=quality, pretrained=True).eval()
    codec.update(force=True)
    x_hat, bpp = compress_decompress(codec, val_crops)
    assert bpp.tolist() == card["clean"]["learned"]["bpp"]  # the very same bytes
    assert rd.psnr(x_hat, val_crops).tolist() == pytest.approx(card["clean"]["learned"]["psnr"], abs=1e-4)


@pytest.mark.parametrize("arch", SHIPPED)
def test_the_rate_points_are_ordered(arch):
    cards = [card_of(q, arch) for q in qualities(arch)]
    rates = [c["means"]["learned"]["bpp"] for c in cards]
    assert rates == sorted(rates) and rates[0] < rates[-1]
    assert [c["lmbda"] for c in cards] == sorted(c["lmbda"] for c in cards)


def test_the_rate_points_beat_jpeg_at_the_same_rate():
    cards = [card_of(q) for q in qualities(ARCH)]
    # The card's own JPEG figures, per image at that image's learned rate: at least 1 dB better at every
    # rate point, 2 dB at the middle one.
    gains = [c["means"]["learned"]["psnr"] - c["means"]["jpeg"]["psnr"] for c in cards]
    assert min(gains) >= 1 and gains[1] >= 2, gains


# The robust finetunings that ship: architecture, quality, method.
ROBUST = [
    (ARCH, 1, "mix"), (ARCH, 2, "mix"), (ARCH, 3, "mix"), (ARCH, 2, "fast"),
    ("mbt2018_mean_cpu", 2, "mix"), ("elic_cpu", 2, "mix"), ("tcm_cpu", 2, "mix"),
    ("mbt2018_mean_vbr_cpu", 2, "mix"),  # one file for every rate, measured at rate 2
]  # fmt: skip


@pytest.mark.parametrize("arch, quality, method", ROBUST)
def test_the_robust_weights_code_the_bitstreams_their_card_records(crops_by_name, arch, quality, method):
    path = shipped_weights(arch, "mse", quality, method)
    card = json.loads(shipped_card(arch, "mse", quality, method).read_text())
    assert (
        file_sha256(path) == card["sha256"]
        and card["started_from"] == shipped_weights(arch, "mse", quality).name
    )
    assert card["quality"] == quality and card["method"] == method
    codec = build_codec(arch, quality=quality, pretrained=True, robust=method).eval()
    codec.update(force=True)
    # Each threat's attack on each split (val; test in <threat>_test) measured these very weights.
    coded = {}  # each split's photos coded once: (PSNR, bpp) per photo
    for evaluation in card["evaluations"].values():
        names = tuple(evaluation["images"])
        if names not in coded:
            x = torch.stack([crops_by_name[name] for name in names])
            x_hat, bpp = compress_decompress(codec, x)
            coded[names] = (rd.psnr(x_hat, x).tolist(), bpp.tolist())
        psnr, bpp = coded[names]
        assert bpp == evaluation["per_image"]["bpp_clean"]
        assert psnr == pytest.approx(evaluation["per_image"]["psnr_clean"], abs=1e-4)
    assert card["val_photos"] == [p.stem for p in SampleImages().splits()["val"]]


def test_the_mix_weights_are_the_tours_method_at_each_quality(tmp_path):
    # model.robust=mix is documented as experiment=cpu_tour's run from each shipped quality: its card
    # records the adversary, method and budget it was trained with, and they must be the preset's.
    cfg = compose_config(tmp_path, "experiment=cpu_tour")
    spec, (eps,) = attack_spec(cfg.attack)
    for quality in qualities(ARCH):
        card = json.loads(shipped_card(ARCH, "mse", quality, "mix").read_text())
        trained = card["trained_against"]
        assert trained["attack"] == spec["_target_"] and trained["eps"] == eps
        for key in ("objective", "threat", "alpha", "steps", "proxy"):
            assert trained[key] == spec[key], key
        assert card["method"] == get_class(cfg.method._target_).name
        assert card["method_config"] == {k: v for k, v in cfg.method.items() if k[0] != "_"}
        assert card["passes"] >= cfg.module.max_passes and card["learning_rate"] == cfg.module.optimizer.lr


def test_every_robust_card_records_its_adversary_and_a_command_that_composes_to_it(tmp_path):
    # The card's command, composed today, trains against the adversary and with the method its card
    # records (the fast weights were trained against the clean reconstruction, before the tour's default
    # became the source), and no card names a folder of the machine that made it.
    for arch, quality, method in ROBUST:
        path = shipped_card(arch, "mse", quality, method)
        card = json.loads(path.read_text())
        script, *overrides = card["command"].removeprefix("python ").split()
        assert script == "train.py" and "/work/" not in path.read_text()
        cfg = compose_config(tmp_path, *overrides)
        spec, (eps,) = attack_spec(cfg.attack)
        trained = card["trained_against"]
        assert trained["attack"] == spec["_target_"] and trained["eps"] == eps
        assert {k: v for k, v in trained.items() if k not in ("attack", "eps")} == {
            k: spec[k] for k in trained if k not in ("attack", "eps")
        }
        assert card["method"] == get_class(cfg.method._target_).name
        assert card["method_config"] == {k: v for k, v in cfg.method.items() if k[0] != "_"}


def test_unknown_robust_weights_are_refused_in_one_line():
    # Other (robust) weights are named in one line, and model.robust needs the shipped weights.
    with pytest.raises(
        FileNotFoundError, match=r"model\.robust=nosuch: rnic ships no such weights .*q2-fast\.pth"
    ):
        build_codec(ARCH, quality=2, pretrained=True, robust="nosuch")
    with pytest.raises(
        ValueError, match=r"model\.robust=fast names shipped weights: it needs model\.pretrained=true"
    ):
        build_codec(ARCH, quality=2, robust="fast")
    with pytest.raises(ValueError, match=r"rnic ships robust weights only for bmshj2018_hyperprior_cpu"):
        build_codec("bmshj2018_hyperprior", quality=2, robust="fast")


@pytest.mark.parametrize("robust", [None, "mix"])
def test_a_run_on_shipped_weights_records_the_file_and_its_hash(tmp_path, robust):
    from rnic.evaluation import evaluate_robustness

    # attack.py's default codec: the shipped middle rate point, clean or robust
    cfg = compose_config(
        tmp_path, "attack=none", "max_images=1", f"model.robust={robust or 'null'}", config_name="attack"
    )
    evaluate_robustness(cfg)
    path = shipped_weights(ARCH, "mse", 2, robust)
    card = json.loads((tmp_path / "card.json").read_text())
    # recorded as a package path, not this machine's folders, and found again by report.py --check
    assert card["weights"] == {
        "pretrained": True,
        "file": f"rnic/weights/{path.name}",
        "sha256": file_sha256(path),
    }
    assert check_card(tmp_path) == []
    config = OmegaConf.load(tmp_path / "config.yaml")
    assert config.model.pretrained_file == str(path) and config.model.pretrained_sha256 == file_sha256(path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["key"]["weights_sha256"] == file_sha256(path)
    shipped = json.loads(shipped_card(ARCH, "mse", 2, robust).read_text())
    psnr = (
        shipped["evaluations"]["linf"]["per_image"]["psnr_clean"]
        if robust
        else shipped["clean"]["learned"]["psnr"]
    )
    assert results["mean"]["psnr_clean"] == pytest.approx(psnr[0], abs=1e-4)


def test_a_codec_without_weights_is_refused_by_attack_py_unless_asked_for(tmp_path):
    from rnic.evaluation import evaluate_robustness

    random_init = ("model=bmshj2018_hyperprior", "model.N=16", "model.M=24", "attack=none", "max_images=1")
    with pytest.raises(ValueError, match=r"neither model\.weights nor model\.pretrained=true"):
        evaluate_robustness(compose_config(tmp_path, *random_init, config_name="attack"))
    assert not any(tmp_path.iterdir())
    cfg = compose_config(tmp_path, *random_init, "model.allow_random_init=true", config_name="attack")
    (mean,) = evaluate_robustness(cfg)
    assert mean["images"] == 1
    with pytest.raises(ValueError, match=r"cannot be combined with model\.pretrained=true"):
        build_codec(ARCH, quality=2, pretrained=True, N=32)
    with pytest.raises(ValueError, match=r"model\.quality=4 is out of range for bmshj2018_hyperprior_cpu"):
        build_codec(ARCH, quality=4)
