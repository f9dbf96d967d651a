"""Real short trainings through `rnic.training.train`, the function train.py calls."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnic import rd
from rnic.callbacks import AtomicCheckpointIO
from rnic.codecs import build_codec, load_weights
from rnic.coding import compress_decompress
from rnic.training import train
from tests.conftest import ROOT, TINY, tiny_widths

ARCHS = [
    "bmshj2018_factorized",
    "bmshj2018_hyperprior",
    "mbt2018_mean",
    "mbt2018",
    "cheng2020_anchor",
    "cheng2020_attn",
    "cheng2020_checkerboard",
    "bmshj2018_hyperprior_vbr",
]  # ELIC: test_adversarial.py's robust step (a tiny ELIC trains far slower); mbt2018_mean_vbr: below


def metrics_rows(output_dir: Path) -> list[dict]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_steps_of_every_architecture(tiny_cfg, tmp_path, arch):
    results = train(tiny_cfg(f"model={arch}"))

    for key in (
        "val/clean/loss",
        "val/clean/psnr",
        "val/clean/ms_ssim",
        "val/clean/bpp",
        "val/clean/bpp_real",
        "val/clean/psnr_real",
    ):
        assert torch.isfinite(torch.tensor(results[key])), key
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "config.yaml").is_file()
    saved = json.loads((tmp_path / "final_metrics.json").read_text())
    assert saved["step"] == 4 and saved["val/clean/bpp_real"] == results["val/clean/bpp_real"]
    rows = metrics_rows(tmp_path)
    assert any(row["val/clean/bpp_real"] for row in rows) and any(row["train/loss"] for row in rows)


def test_a_variable_rate_codec_trains_a_drawn_rate_each_step(tiny_cfg, tmp_path):
    train(tiny_cfg("model=mbt2018_mean_vbr", "model.rate=3", "trainer.max_steps=6"))
    drawn = {float(row["train/rate"]) for row in metrics_rows(tmp_path) if row.get("train/rate")}
    assert len(drawn) > 2 and drawn <= set(range(1, 9))


def test_a_training_step_takes_its_rates_lambda_and_gives_both_back():
    from rnic.module import CodecModule

    module = CodecModule(build_codec("mbt2018_mean_vbr", quality=3, rate=3, N=16, M=24), quality=3)
    module.frozen["teacher"] = build_codec(
        "mbt2018_mean_vbr", quality=3, rate=3, N=16, M=24
    )  # method=teacher's
    assert module.lmbda == 0.0067
    with module.training_rate() as rate:
        assert module.codec.rate == module.frozen["teacher"].rate == rate != 3
        assert module.lmbda == module.codec.lmbda[rate - 1]
    assert (module.codec.rate, module.frozen["teacher"].rate, module.lmbda) == (3, 3, 0.0067)


def test_checkpoint_reloads_to_identical_reconstructions_and_bitstreams(tiny_cfg, tmp_path):
    cfg = tiny_cfg("model=mbt2018_mean")
    results = train(cfg)
    ckpt = tmp_path / "checkpoints" / "best.ckpt"

    codec = load_weights(build_codec("mbt2018_mean", N=16, M=24), ckpt).eval()
    codec.update(force=True)
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    trained = {k[len("codec.") :]: v for k, v in stored["state_dict"].items() if k.startswith("codec.")}
    assert all(torch.equal(codec.state_dict()[k], v) for k, v in trained.items())

    from torchvision.transforms import v2

    from rnic.data import SampleImages, read_image

    # What validation coded: the first val image's centre crop (TINY: data.val_crop=192).
    x = v2.CenterCrop(192)(read_image(SampleImages().splits()["val"][0]))[None]
    decoded, bpp = compress_decompress(codec, x)
    assert rd.psnr(decoded, x).item() == pytest.approx(results["val/clean/psnr_real"], rel=1e-5)
    # The logged real bpp is what the entropy coder produces for the same image and weights.
    assert results["val/clean/bpp_real"] == pytest.approx(bpp.item(), rel=1e-6)


def test_resume_continues_at_the_saved_step(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_steps=4"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4
    assert len(saved["optimizer_states"]) == 2 and saved["lr_schedulers"]

    resumed_dir = tmp_path / "resumed"
    cfg = tiny_cfg("trainer.max_steps=8", f"ckpt_path={last}")
    cfg.paths.output_dir = str(resumed_dir)
    results = train(cfg)
    steps = [int(row["step"]) for row in metrics_rows(resumed_dir) if row["train/loss"]]
    assert min(steps) == 4  # a fresh run would log from step 0
    assert json.loads((resumed_dir / "final_metrics.json").read_text())["step"] == 8
    assert torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    assert "val/clean/psnr" in results


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_steps=4"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    # The run resumed with a lambda that overflows the loss at once (lambda * 255^2 * MSE > 3.4e38).
    cfg = tiny_cfg(
        f"ckpt_path={last}", "model.lmbda=1e38", "trainer.max_steps=8",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"train/(aux_)?loss is not finite at step \d"):
        train(cfg)
    assert last.read_bytes() == good  # the good checkpoint is untouched
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))


def test_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"weights": torch.ones(3)}, path)
    good = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails mid-write
        io.save_checkpoint({"weights": torch.zeros(1000), "broken": lambda: None}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["model.quality=9"], ValueError, "model.quality=9 is out of range"),
        (["model.metric=psnr"], ValueError, "model.metric='psnr' is unknown"),
        (["model.codec.arch=vtm"], ValueError, "model.codec.arch='vtm' is not a known codec"),
        (["data=folder", "data.source.root=/nonexistent/images"], FileNotFoundError, "/nonexistent/images"),
        (["ckpt_path=/nonexistent/last.ckpt"], FileNotFoundError, "ckpt_path='/nonexistent/last.ckpt'"),
        (["data.patch_size=2048"], ValueError, "smaller than data.patch_size=2048"),
        (["model.weights=/nonexistent/w.pth"], FileNotFoundError, "model.weights='/nonexistent/w.pth'"),
    ],
)
def test_bad_input_fails_before_training_with_the_key_named(tiny_cfg, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message.replace(".", r"\.").replace("(", r"\(")):
        train(tiny_cfg(*overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_model_name_is_refused_by_the_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "model=jpeg_xl", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Could not find 'model/jpeg_xl'" in result.stderr


def test_wandb_offline_run_logs_metrics_config_and_images(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train(tiny_cfg("logger=wandb"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = runs[0]
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert any(f.startswith("files/media/images/val/reconstructions") for f in files), sorted(files)
    # The run's record log (what `wandb sync` uploads) holds the config and the metrics.
    (record_log,) = run.glob("*.wandb")
    records = record_log.read_bytes()
    for needle in (b"real_coding_images", b"val/clean/bpp_real", b"val/clean/psnr", b"train/loss"):
        assert needle in records, needle


@pytest.mark.slow
def test_two_process_ddp_on_cpu_writes_one_checkpoint(tmp_path):
    overrides = [o for o in TINY if not o.startswith("trainer.accelerator")] + tiny_widths([])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "trainer=ddp_cpu",
            *overrides,
            "data.max_val_images=2",
            "logger=csv",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Rank 1 runs in rank 0's folder and writes no checkpoint of its own.
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ckpt")) == [
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert "Val metrics, starting model and best checkpoint" in result.stdout


def test_tensorboard_run_writes_scalars_and_images(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_cfg("logger=tensorboard"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "val/clean/bpp_real" in events.Tags()["scalars"]
    assert "val/reconstruction_0" in events.Tags()["images"]
