"""attack.py's evaluation, run for real on a trained small codec and the sample photos."""

import csv
import json
import subprocess
import sys

import pytest

from rnic import rd
from rnic.codecs import build_codec, load_weights
from rnic.data import read_image
from rnic.evaluation import evaluate_robustness as evaluate
from rnic.evaluation.records import IMAGE_COLUMNS
from tests.conftest import ROOT, attack_cfg, compose_config, tiny_widths

FIELDS = {"image", *IMAGE_COLUMNS}


def test_results_hold_every_figure_and_the_real_bitrate(tmp_path, trained_checkpoint):
    (mean,) = evaluate(attack_cfg(tmp_path, trained_checkpoint, "attack_run.save_images=true"))

    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["images"]) == 2
    for record in results["images"]:
        assert set(record) >= FIELDS
        assert record["linf"] <= 0.0157 * 255 + 1e-3
        assert record["vi"] is not None and record["bpp_adv"] > 0
    assert results["mean"]["psnr_adv"] == pytest.approx(mean["psnr_adv"])

    # The reported bpp is the size of the bitstreams compress() writes for those exact images.
    codec = load_weights(build_codec("bmshj2018_hyperprior", N=32, M=48), trained_checkpoint).eval()
    codec.update(force=True)
    for record in results["images"]:
        x_adv = read_image(tmp_path / "adversarial" / f"{record['image']}.png")[None]
        strings = codec.compress(rd.pad(x_adv)[0])["strings"]
        bits = 8 * sum(len(s[0]) for s in strings)
        assert record["bpp_adv"] == pytest.approx(bits / (192 * 192), rel=1e-9)

    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [r["image"] for r in results["images"]] + ["mean"]
    assert float(rows[0]["bpp_clean"]) == pytest.approx(results["images"][0]["bpp_clean"])
    assert sorted(p.name for p in (tmp_path / "panels").iterdir()) == sorted(
        f"{r['image']}.png" for r in results["images"]
    )


def test_a_rerun_skips_measured_images(tmp_path, trained_checkpoint):
    evaluate(attack_cfg(tmp_path, trained_checkpoint, "max_images=1"))
    first = json.loads((tmp_path / "results.json").read_text())["images"]
    evaluate(attack_cfg(tmp_path, trained_checkpoint, "max_images=2"))
    both = json.loads((tmp_path / "results.json").read_text())["images"]
    assert len(both) == 2 and both[0] == first[0]  # untouched, seconds included


def test_transfer_round_trip(tmp_path, trained_checkpoint):
    source = tmp_path / "source"
    evaluate(attack_cfg(source, trained_checkpoint, "attack_run.save_images=true"))
    replay = tmp_path / "replay"
    evaluate(attack_cfg(replay, trained_checkpoint, f"attack_run.load_from={source}"))
    original = json.loads((source / "results.json").read_text())["images"]
    replayed = json.loads((replay / "results.json").read_text())["images"]
    for a, b in zip(original, replayed, strict=True):
        assert a["bpp_adv"] == b["bpp_adv"] and a["psnr_adv"] == pytest.approx(b["psnr_adv"])

    other = tmp_path / "other"  # the same adversarial images on another codec
    evaluate(
        attack_cfg(
            other,
            trained_checkpoint,
            f"attack_run.load_from={source}",
            "model=bmshj2018_factorized",
            "model.weights=null",
            "model.allow_random_init=true",
            "model.N=16",
            "model.M=16",
        )
    )
    assert len(json.loads((other / "results.json").read_text())["images"]) == 2


def test_a_list_of_budgets_draws_a_robustness_curve(tmp_path, trained_checkpoint):
    curve = evaluate(attack_cfg(tmp_path, trained_checkpoint, "attack.eps=[0.004,0.0157]", "max_images=1"))
    assert [c["eps"] for c in curve] == [0.004, 0.0157]
    assert curve[0]["psnr_in"] > curve[1]["psnr_in"]
    assert (tmp_path / "robustness_curve.png").stat().st_size > 10_000
    assert (tmp_path / "eps_0.004" / "results.json").is_file()
    assert json.loads((tmp_path / "curve.json").read_text())[1]["eps"] == 0.0157


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["attack.eps=0"], ValueError, "attack.eps=0 must be > 0"),
        (["attack.eps=[0.01,-0.01]"], ValueError, "must be > 0"),
        (["attack.steps=0"], ValueError, "attack.steps=0 must be >= 1"),
        (["attack=threshold", "attack.steps=0"], ValueError, "attack.steps=0 must be >= 1"),
        (
            ["model=bmshj2018_factorized"],
            ValueError,
            "holds a ScaleHyperprior but model= builds a FactorizedPrior",
        ),
        (["attack_run.load_from=/nonexistent"], FileNotFoundError, "lacks 2 adversarial image"),
        (["split=train2"], ValueError, "split='train2' is not one of"),
    ],
)
def test_bad_input_fails_before_any_attack(tmp_path, trained_checkpoint, overrides, error, message):
    with pytest.raises(error, match=message.replace(".", r"\.").replace("(", r"\(")):
        evaluate(attack_cfg(tmp_path, trained_checkpoint, *overrides))
    assert not (tmp_path / "results.json").exists()


def test_a_target_of_another_size_fails_before_any_attack(tmp_path, trained_checkpoint):
    import imageio.v3 as iio
    import numpy as np

    target = tmp_path / "target.png"
    iio.imwrite(target, np.zeros((64, 64, 3), dtype=np.uint8))
    cfg = attack_cfg(
        tmp_path, trained_checkpoint, f"attack_run.target={target}", "attack.objective.kind=targeted"
    )
    with pytest.raises(ValueError, match=r"attack_run.target=.*target.png' is \(64, 64\)"):
        evaluate(cfg)
    assert not (tmp_path / "results.json").exists()


def test_attack_py_entry_point(tmp_path, trained_checkpoint):
    result = subprocess.run(
        [
            sys.executable,
            "attack.py",
            "model=bmshj2018_hyperprior",
            "model.N=32",
            "model.M=48",
            f"model.weights={trained_checkpoint}",
            "attack=threshold",
            "attack.steps=5",
            "data.val_crop=192",
            "max_images=1",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "psnr_adv" in result.stdout and "mean" in result.stdout
    assert (tmp_path / "results.json").is_file() and (tmp_path / "config.yaml").is_file()


def test_unknown_attack_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "attack.py", "attack=fgsm2", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Could not find 'attack/fgsm2'" in result.stderr


def test_only_the_attacked_split_is_checked(tmp_path, trained_checkpoint):
    import imageio.v3 as iio
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "val").mkdir()
    iio.imwrite(
        tmp_path / "images" / "train" / "small.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    )
    iio.imwrite(
        tmp_path / "images" / "val" / "photo.png", rng.integers(0, 256, (200, 240, 3), dtype=np.uint8)
    )
    folder = [
        "data=folder",
        f"data.source.root={tmp_path / 'images'}",
        "data.source.test=null",
        "data.val_crop=null",
    ]
    (mean,) = evaluate(attack_cfg(tmp_path / "run", trained_checkpoint, *folder))
    assert mean["images"] == 1  # the 64x64 training image (smaller than data.patch_size) is not in the way
    (record,) = json.loads((tmp_path / "run" / "results.json").read_text())["images"]
    assert record["image"] == "photo"


def auto_cfg(tmp_path, checkpoint, *overrides):
    return compose_config(
        tmp_path,
        "model=bmshj2018_hyperprior",
        "model.N=32",
        "model.M=48",
        f"model.weights={checkpoint}",
        "data.val_crop=192",
        "max_images=2",
        *overrides,
        config_name="attack",
    )


def test_auto_is_the_default_and_records_the_winner_of_each_image(tmp_path, trained_checkpoint):
    (mean,) = evaluate(auto_cfg(tmp_path, trained_checkpoint, "attack.steps=3", "attack.queries=4"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["attack"].startswith("AutoAttack(")
    members = results["members"]
    assert sum(row["wins"] for row in members.values()) == 2 and "square" in members
    for record in results["images"]:
        figures = record["members"]
        assert record["winner"] in figures
        # The kept example is the one with the worst decoded PSNR, and it is what attack.py measured.
        worst = min(f["psnr_adv"] for f in figures.values() if f.get("psnr_adv") is not None)
        assert record["psnr_adv"] == pytest.approx(worst, abs=1e-4)
        assert record["psnr_adv"] == pytest.approx(figures[record["winner"]]["psnr_adv"], abs=1e-4)
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["winner"] for r in rows[:2]] == [r["winner"] for r in results["images"]]


# The untrained tiny variable-rate codec reconstructs every input alike (its latents all round to one value
# under any start), so members against the clean reconstruction sit at a true stationary point there.
@pytest.mark.parametrize("model", [pytest.param("elic", marks=pytest.mark.slow), "cheng2020_checkerboard"])
def test_auto_attacks_every_codec_family_through_its_straight_through_rounding(tmp_path, model):
    # Their forward rounds with straight-through gradients: every gradient member runs (none skipped).
    cfg = compose_config(
        tmp_path,
        f"model={model}",
        *tiny_widths([f"model={model}"]),
        "model.allow_random_init=true",
        "data.val_crop=64",
        "max_images=1",
        "attack=auto",
        "attack.steps=1",
        "attack.queries=2",
        "attack.eps=0.25",  # a random start that flips roundings of an untrained codec: a residual to follow
        config_name="attack",
    )
    (mean,) = evaluate(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert {name for name, row in results["members"].items() if row["skipped"]} == set()
    (record,) = results["images"]
    assert record["winner"] in record["members"] and record["bpp_adv"] > 0
    assert mean["psnr_adv"] == pytest.approx(min(f["psnr_adv"] for f in record["members"].values()), abs=1e-4)


def test_batched_and_one_by_one_runs_agree(tmp_path, trained_checkpoint):
    records = {}
    for size in (1, 2):
        folder = tmp_path / f"batch_{size}"
        overrides = ["attack=apgd", "attack.steps=3", "attack.proxy=noise", f"batch_size={size}"]
        evaluate(auto_cfg(folder, trained_checkpoint, *overrides))
        records[size] = json.loads((folder / "results.json").read_text())["images"]
    for one, two in zip(records[1], records[2], strict=True):
        assert one["image"] == two["image"]
        for key in ("psnr_in", "psnr_adv", "bpp_adv", "vi"):
            assert one[key] == pytest.approx(two[key], rel=1e-3), key


def test_a_rate_attack_records_the_real_rate_and_coding_time(tmp_path, trained_checkpoint):
    from rnic.report import build_report

    overrides = ["attack=apgd", "attack.steps=3", "attack.objective.kind=rate", "attack_run.save_images=true"]
    (mean,) = evaluate(auto_cfg(tmp_path / "run", trained_checkpoint, *overrides))
    codec = load_weights(build_codec("bmshj2018_hyperprior", N=32, M=48), trained_checkpoint).eval()
    codec.update(force=True)
    for record in json.loads((tmp_path / "run" / "results.json").read_text())["images"]:
        x_adv = read_image(tmp_path / "run" / "adversarial" / f"{record['image']}.png")[None]
        strings = codec.compress(rd.pad(x_adv)[0])["strings"]
        assert record["bpp_adv"] == 8 * sum(len(s[0]) for s in strings) / (192 * 192)  # the real strings
        assert record["bpp_ratio"] == pytest.approx(record["bpp_adv"] / record["bpp_clean"])
        assert record["bpp_ratio"] > 1 and all(record[k] > 0 for k in ("encode_s_adv", "decode_s_clean"))
    found = build_report([tmp_path / "run"], tmp_path / "report")
    assert found["attacks"][0]["bpp_ratio"] == pytest.approx(mean["bpp_ratio"])
    assert (tmp_path / "report" / "rate_attacks.png").stat().st_size > 10_000


def test_an_linf_budget_that_loses_a_level_in_8_bits_is_named(tmp_path, trained_checkpoint, caplog):
    evaluate(attack_cfg(tmp_path, trained_checkpoint, "max_images=1", eps=0.0078, steps=1))
    assert "attack.eps=0.0078 is 1.989/255" in caplog.text and "a 1/255 attack" in caplog.text
    assert "write 2/255 as 0.00784313725490196" in caplog.text
    caplog.clear()
    evaluate(attack_cfg(tmp_path / "exact", trained_checkpoint, "max_images=1", eps=2 / 255, steps=1))
    assert "/255 attack" not in caplog.text
