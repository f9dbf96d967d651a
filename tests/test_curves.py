"""Curves of robust overfitting: train crops, val and test evaluated at every validation (data.monitor),
drawn by report.py against codec passes; early stopping on val's attacked PSNR (callbacks=early_stopping)."""

import csv

import pytest

from rnic.report import build_report
from rnic.report.training import curves_figure, psnr_curves
from rnic.training import train
from tests.conftest import TINY, compose_config

ATTACKED = ["attack=linf", "attack.steps=1", "module.optimizer.lr=1e-3"]


def test_monitored_splits_log_curves_and_early_stopping_ends_the_run(tmp_path):
    out = tmp_path / "run"
    cfg = compose_config(
        out, *TINY, "model.N=16", "model.M=24", *ATTACKED, "trainer.max_steps=12",
        "data.monitor=[train,test]", "data.monitor_images=1", "data.val_crop=128", "data.test_crop=128",
        "callbacks=early_stopping",
        "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=100",
    )  # fmt: skip
    results = train(cfg)
    # A gain of 100 dB never comes: the first validation sets the best, the second ends the run.
    assert results["passes"] < 12 * 2 and (out / "checkpoints" / "best.ckpt").is_file()
    with open(out / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/passes_total")]
    # The starting model, two validations during training, and the best checkpoint's again.
    assert len(rows) == 4
    for key in ("monitor/train/clean/psnr", "monitor/train/attacked/psnr", "monitor/test/attacked/psnr"):
        assert all(row[key] for row in rows), key
    passes = [float(r["val/passes_total"]) for r in rows]
    assert passes[0] == 0 and passes[1] > 0 and passes[2] > passes[1] and passes[3] in passes[1:3]
    curves = psnr_curves(out)
    assert set(curves) == {f"{s} {k}" for s in ("train crops", "val", "test") for k in ("clean", "attacked")}
    # The curve is training's validations; the best's second validation does not draw a line back.
    for points in curves.values():
        assert [p for p, _ in points] == passes[:3]
    assert curves["val clean"][-1][1] == pytest.approx(float(rows[2]["val/clean/psnr"]))

    report = build_report([out], tmp_path / "report")
    assert report["trainings"] and (tmp_path / "report" / "psnr_curves.png").is_file()
    assert curves_figure([{"run": str(tmp_path / "elsewhere")}]) is None  # no curves, no figure


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["callbacks=early_stopping"], "callbacks.best_checkpoint.monitor=val/attacked/psnr needs attacked"),
        ([*ATTACKED, "callbacks.best_checkpoint.monitor=monitor/test/attacked/psnr"],
         r"callbacks.best_checkpoint.monitor=monitor/test/attacked/psnr needs data.monitor=\[test\]"),
        (["data.monitor=[val]"], r"data.monitor=\['val'\] may name train and test"),
    ],
)  # fmt: skip
def test_a_monitored_metric_that_is_never_logged_is_refused_up_front(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(compose_config(tmp_path, *TINY, "model.N=16", "model.M=24", *overrides))


def test_the_protocol_preset_evaluates_val_and_test_and_draws_curves(tmp_path):
    cfg = compose_config(tmp_path, "experiment=robust_methods_protocol", keep_hydra=True)
    assert list(cfg.robust_eval.splits) == ["val", "test"] and list(cfg.data.monitor) == ["train", "test"]
    assert set(cfg.robust_eval.attacks) == {"linf", "mse"}
    methods = cfg.hydra.sweeper.params["method"].split(",")
    assert methods[0] == "none" and "mix" in methods and cfg.hydra.sweeper.params["model.quality"] == "1,2,3"
