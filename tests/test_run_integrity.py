"""Run integrity: an unfinished, mismatched or refused run never passes for a good one, and never changes
a byte of an existing run's folder. Real train.py / attack.py / report.py processes, killed with SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from torchvision.transforms import v2

from rnic import rd
from rnic.coding import compress_decompress
from rnic.defenses.dihedral import dihedral, inverse_dihedral
from rnic.io import file_sha256
from tests.conftest import ROOT, TINY, attack_cfg, compose_config

ATTACK = ["model=bmshj2018_hyperprior", "model.N=32", "model.M=48", "data.val_crop=192"]
TRAIN = [*TINY, "model.N=16", "model.M=24"]


def folder_hash(folder: Path) -> str:
    """Every file's relative path and bytes: any change to the folder changes it."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def command(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def kill_when(script: str, args: list[str], ready, timeout: float = 300) -> None:
    """Start `script`, SIGKILL it as soon as `ready()` holds (it must not have finished by then)."""
    process = subprocess.Popen(
        [sys.executable, script, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        while not ready():
            assert process.poll() is None, f"{script} ended before the kill point"
            assert time.monotonic() - started < timeout, f"{script} never reached the kill point"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_killed_attack_run_is_marked_unfinished_refused_by_check_and_resumes(tmp_path, trained_checkpoint):
    run = tmp_path / "attack"
    args = [
        *ATTACK,
        f"model.weights={trained_checkpoint}",
        "attack=linf",
        "attack.steps=150",
        "attack.eps=0.0157",
        "max_images=2",
        "batch_size=1",
        f"hydra.run.dir={run}",
    ]
    # results.csv is the last of a batch's three files (records.write_budget): killed after it, the folder
    # holds the first batch whole; killed earlier, the card could be missing (a race seen in CI).
    kill_when("attack.py", args, lambda: (run / "results.csv").is_file())
    results = json.loads((run / "results.json").read_text())
    card = json.loads((run / "card.json").read_text())
    assert (len(results["images"]), results["images_planned"], results["complete"]) == (1, 2, False)
    assert card["complete"] is False and card["data"]["images_planned"] == 2
    check = command("report.py", "--check", str(run))
    assert check.returncode == 1 and "unfinished run, 1 of 2 image(s) done" in check.stderr
    report = command("report.py", str(run), "--out", str(tmp_path / "report"))
    assert report.returncode == 1 and "skipped" in report.stderr and "unfinished" in report.stderr
    resumed = command("attack.py", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "1 of 2 image(s) done, 1 left" in resumed.stdout
    assert json.loads((run / "results.json").read_text())["complete"] is True
    assert command("report.py", "--check", str(run)).returncode == 0


def test_a_killed_training_resumes_and_a_finished_one_is_never_overwritten(tmp_path):
    run = tmp_path / "train"
    args = [*TRAIN, "trainer.max_steps=30", "trainer.val_check_interval=10", f"hydra.run.dir={run}"]
    last = run / "checkpoints" / "last.ckpt"
    kill_when("train.py", args, lambda: last.is_file())
    report = command("report.py", str(run), "--out", str(tmp_path / "report"))
    assert report.returncode == 1 and "unfinished training" in report.stderr
    resumed = command("train.py", *args, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "final_metrics.json").read_text())["step"] == 30
    # A fresh start into the finished run's folder is refused in one line, and changes no byte there,
    # Hydra's record and the job log included.
    before = folder_hash(run)
    for again, message in ((args, "holds a run already"), ([*args, f"ckpt_path={last}", "data.patch_size=7"],
                           "data.patch_size=7 is smaller than the codec's stride 64")):  # fmt: skip
        refused = command("train.py", *again)
        assert refused.returncode == 1 and refused.stderr.strip().startswith("error:"), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and message in refused.stderr, refused.stderr
        assert folder_hash(run) == before
    # Asked for explicitly, it starts over: the old run's files are gone, not mixed with the new ones.
    fresh = command("train.py", *args, "trainer.max_steps=4", "overwrite=true")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads((run / "final_metrics.json").read_text())["step"] == 4


def test_refused_attack_reruns_change_nothing_and_unreadable_records_are_named(tmp_path, trained_checkpoint):
    run = tmp_path / "attack"
    args = [
        *ATTACK,
        f"model.weights={trained_checkpoint}",
        "attack=none",
        "max_images=1",
        f"hydra.run.dir={run}",
    ]
    assert command("attack.py", *args).returncode == 0
    before = folder_hash(run)
    for bad, message in (
        ("attack=linf", "holds results of another run"),
        ("max_images=-1", "max_images=-1 must"),
    ):
        refused = command("attack.py", *args, bad)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert message in refused.stderr and folder_hash(run) == before
    # report.py: a corrupt run among good ones is skipped and named; alone, one line naming it.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text((run / "results.json").read_text()[:40])
    train_run = tmp_path / "killed_training" / "checkpoints"
    train_run.mkdir(parents=True)
    (train_run / "last.ckpt").write_bytes(trained_checkpoint.read_bytes()[:1000])
    report = command(
        "report.py",
        str(run),
        str(broken),
        str(tmp_path / "killed_training"),
        "--out",
        str(tmp_path / "report"),
    )
    assert report.returncode == 0, report.stderr
    assert f"{broken / 'results.json'}: not a valid results file" in report.stderr
    assert (
        "1 attack result(s)" in report.stdout
        and "Runs left out" in (tmp_path / "report" / "report.md").read_text()
    )
    alone = command("report.py", str(broken), "--out", str(tmp_path / "report2"))
    assert alone.returncode == 1 and alone.stderr.strip().splitlines()[-1].startswith(
        "error: no finished run"
    )
    assert "FutureWarning" not in report.stderr
    truncated = command(
        "train.py", *TRAIN, f"ckpt_path={train_run / 'last.ckpt'}", f"hydra.run.dir={tmp_path / 't'}"
    )
    assert (
        truncated.returncode == 1
        and "is not a readable checkpoint: the file is truncated" in truncated.stderr
    )
    assert len(truncated.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_check_recomputes_the_means_from_the_per_image_records(tmp_path, trained_checkpoint):
    from rnic.evaluation import evaluate_robustness
    from rnic.evaluation.checks import check_card

    evaluate_robustness(attack_cfg(tmp_path, trained_checkpoint, steps=2))
    assert check_card(tmp_path) == []
    results = json.loads((tmp_path / "results.json").read_text())
    results["images"][0]["psnr_adv"] += 5
    (tmp_path / "results.json").write_text(json.dumps(results))
    problems = check_card(tmp_path)
    assert any("mean psnr_adv=" in p and "per-image records give" in p for p in problems), problems


def test_ranges_never_modify_the_weights_and_other_weights_are_refused(tmp_path, trained_checkpoint):
    from rnic.defenses.latent import measure_ranges
    from rnic.evaluation import evaluate_robustness

    weights = tmp_path / "codec.ckpt"
    weights.write_bytes(trained_checkpoint.read_bytes())
    sha = file_sha256(weights)
    cfg = compose_config(tmp_path / "ranges", *ATTACK, f"model.weights={weights}", config_name="attack")
    measure_ranges(cfg)
    assert file_sha256(weights) == sha and Path(f"{weights}.latent_ranges.pt").is_file()
    cfg = attack_cfg(tmp_path / "clamped", weights, "defense=latent_clamp", "max_images=1")
    evaluate_robustness(cfg)  # the ranges are found beside the weights
    # Another codec of the same architecture (same channel count), the first one's ranges beside it.
    other = tmp_path / "other.ckpt"
    ckpt = torch.load(weights, weights_only=True)
    ckpt["state_dict"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, other)
    Path(f"{other}.latent_ranges.pt").write_bytes(Path(f"{weights}.latent_ranges.pt").read_bytes())
    with pytest.raises(ValueError, match=r"ranges measured on weights with SHA-256 .* but model\.weights="):
        evaluate_robustness(attack_cfg(tmp_path / "o", other, "defense=latent_clamp"))
    with pytest.raises(ValueError, match=r"model\.weights is not set"):
        measure_ranges(compose_config(tmp_path / "r2", *ATTACK, config_name="attack"))
    with pytest.raises(ValueError, match=r"model=jpeg has no latent"):
        measure_ranges(
            compose_config(tmp_path / "r3", "model=jpeg", f"model.weights={weights}", config_name="attack")
        )


def test_a_missed_rate_target_is_recorded_and_the_key_keeps_no_unused_quality(tmp_path):
    from rnic.evaluation import evaluate_robustness
    from rnic.evaluation.records import run_key

    cfg = compose_config(
        tmp_path, "model=jpeg", "model.target_bpp=0.001", "attack=none", "max_images=2", config_name="attack"
    )
    evaluate_robustness(cfg)
    records = json.loads((tmp_path / "results.json").read_text())["images"]
    assert all(
        r["target_missed_clean"] and r["quality_clean"] == 1 and r["bpp_clean"] > 0.001 for r in records
    )
    assert run_key(cfg)["model"]["quality"] is None
    met = compose_config(
        tmp_path / "met",
        "model=jpeg",
        "model.target_bpp=1.0",
        "attack=none",
        "max_images=1",
        config_name="attack",
    )
    evaluate_robustness(met)
    (record,) = json.loads((tmp_path / "met" / "results.json").read_text())["images"]
    assert (
        not record["target_missed_clean"]
        and record["bpp_clean"] <= 1.0
        and 1 < record["quality_clean"] <= 100
    )


def test_settings_that_would_train_nothing_are_refused_before_training(tiny_cfg, tmp_path):
    from rnic.training import train

    for override, message in (
        ("trainer.max_steps=0", r"trainer\.max_steps=0: a run needs at least one optimizer step"),
        ("data.patch_size=7", r"data\.patch_size=7 is smaller than the codec's stride 64"),
    ):
        with pytest.raises(ValueError, match=message):
            train(tiny_cfg(override))
        assert not any(tmp_path.iterdir())


def test_attack_py_on_a_folder_reads_only_the_split_it_attacks(tmp_path):
    from rnic.classical import to_uint8
    from rnic.data import SampleImages, read_image
    from rnic.evaluation import evaluate_robustness

    (tmp_path / "data" / "val").mkdir(parents=True)  # no train/ or test/ folder
    image = read_image(SampleImages().splits()["val"][0])[:, :128, :128]
    iio.imwrite(tmp_path / "data" / "val" / "a.png", to_uint8(image))
    cfg = compose_config(
        tmp_path / "run",
        "model=jpeg",
        "attack=none",
        "data=folder",
        f"data.source.root={tmp_path / 'data'}",
        "data.val_crop=null",
        config_name="attack",
    )
    (mean,) = evaluate_robustness(cfg)
    assert mean["images"] == 1


def test_self_ensemble_figures_are_those_of_the_branch_it_sends(tmp_path, trained_checkpoint, trained_codec):
    """attack.py's clean figures behind the self-ensemble are the best branch's, coded alone: its PSNR, and
    its bpp plus the 3-bit (one byte) header."""
    from rnic.data import SampleImages, read_image
    from rnic.evaluation import evaluate_robustness

    evaluate_robustness(attack_cfg(tmp_path, trained_checkpoint, "defense=self_ensemble", steps=1))
    records = json.loads((tmp_path / "results.json").read_text())["images"]
    for record, path in zip(records, SampleImages().splits()["val"], strict=False):
        x = v2.CenterCrop(192)(read_image(path))[None]
        branches = []
        for k in range(8):
            x_hat, bpp = compress_decompress(trained_codec, dihedral(x, k))
            branches.append((float(rd.psnr(inverse_dihedral(x_hat, k), x)), float(bpp)))
        psnr, bpp = max(branches)
        assert record["psnr_clean"] == pytest.approx(psnr, abs=1e-4)
        assert record["bpp_clean"] == pytest.approx(bpp + 8 / 192**2, rel=1e-9)
        assert record["psnr_clean"] >= record["psnr_clean_undefended"] - 1e-4
