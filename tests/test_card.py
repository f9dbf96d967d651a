"""Model cards: written by every run, round-tripped, and checked against their run folders."""

import json
import subprocess
import sys

from rnic.evaluation import evaluate_robustness
from rnic.evaluation.card import CARD_FILE
from rnic.evaluation.checks import check_card
from tests.conftest import ROOT, compose_config


def attack_run(tmp_path, weights):
    cfg = compose_config(
        tmp_path, "model=bmshj2018_hyperprior", "model.N=32", "model.M=48", f"model.weights={weights}",
        "data.val_crop=192", "max_images=2", "attack=apgd", "attack.steps=2", config_name="attack",
    )  # fmt: skip
    (mean,) = evaluate_robustness(cfg)
    return mean


def test_an_attack_card_records_what_was_evaluated_and_checks_out(tmp_path, trained_checkpoint):
    weights = tmp_path / "weights.ckpt"
    weights.write_bytes(trained_checkpoint.read_bytes())
    run = tmp_path / "run"
    mean = attack_run(run, weights)
    card = json.loads((run / CARD_FILE).read_text())
    assert card["kind"] == "attack" and card["codec"] == "bmshj2018_hyperprior" and card["threat"] == "linf"
    assert card["data"]["split"] == "val" and card["data"]["images"] == 2
    assert card["attack"].startswith("APGD(") and card["proxy"] == "skip"
    assert card["means"] == json.loads((run / "results.json").read_text())["mean"]
    assert card["means"]["psnr_adv"] == mean["psnr_adv"]
    assert card["versions"]["torch"] and card["versions"]["compressai"]
    licences = card["data"]["licences"]  # data=sample: each photo's licence as its package states it
    assert len(licences) == 24 and licences["china"].startswith("CC BY 2.0") and "CC0" in licences["camera"]
    assert check_card(run) == []

    result = subprocess.run([sys.executable, "report.py", "--check", str(run)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0 and "1 card(s) match" in result.stdout

    weights.write_bytes(weights.read_bytes() + b"\0")  # the weights change after the run
    result = subprocess.run([sys.executable, "report.py", "--check", str(run)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and f"{weights.resolve()}: its SHA-256 is not the one" in result.stderr


def test_a_changed_result_or_a_train_card_is_caught(tiny_cfg, tmp_path):
    from rnic.training import train

    train(tiny_cfg())
    assert check_card(tmp_path) == []
    card = json.loads((tmp_path / CARD_FILE).read_text())
    assert card["kind"] == "train" and card["means"]["val/clean/psnr"] is not None
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    final["val/clean/psnr"] += 1.0
    (tmp_path / "final_metrics.json").write_text(json.dumps(final))
    (problem,) = check_card(tmp_path)
    assert "final_metrics.json: val/clean/psnr=" in problem


def test_a_card_records_paths_without_the_machines_folders(tmp_path, trained_checkpoint, monkeypatch):
    """Weights inside the run folder are recorded relative to it, the command's paths relative to the working
    directory; report.py --check finds the weights from either place."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "a"
    (run / "weights").mkdir(parents=True)
    weights = run / "weights" / "codec.ckpt"
    weights.write_bytes(trained_checkpoint.read_bytes())
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/rnic-attack", f"model.weights={weights}"])
    attack_run(run, weights)
    card = json.loads((run / CARD_FILE).read_text())
    assert card["weights"]["file"] == "weights/codec.ckpt"
    assert card["command"] == "rnic-attack model.weights=runs/a/weights/codec.ckpt"
    assert str(tmp_path) not in json.dumps(card)
    assert check_card(run) == []
    monkeypatch.chdir(ROOT)  # checked from elsewhere: the run folder still finds its weights
    assert check_card(run) == []
