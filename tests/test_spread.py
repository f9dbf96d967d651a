"""The spread beside every mean over a few photos: rd.spread, attack.py's table, the study table."""

import json
import statistics

import numpy as np
import pytest

from rnic import rd
from rnic.evaluation.console import results_table
from rnic.report.methods import method_table


def test_spread_gives_median_std_and_a_seeded_bootstrap_interval():
    values = [21.0, 22.0, 23.0, 30.0, None]  # None: an undefined figure, left out as by the mean
    figures = rd.spread(values)
    assert figures["mean"] == pytest.approx(24.0) and figures["median"] == pytest.approx(22.5)
    assert figures["std"] == pytest.approx(statistics.stdev([21.0, 22.0, 23.0, 30.0]))
    assert figures["n"] == 4
    low, high = figures["ci95"]
    # Bootstrap means of 4 values lie between their min and max; one outlier widens the interval upwards.
    assert 21.0 <= low < figures["median"] < figures["mean"] < high <= 30.0
    assert high - figures["mean"] > figures["mean"] - low
    assert rd.spread(values) == figures  # seeded
    rng = np.random.default_rng(0)
    many = rng.normal(10.0, 2.0, 400)
    wide, narrow = rd.spread(many[:8])["ci95"], rd.spread(many)["ci95"]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more images, a tighter interval
    assert narrow[0] < 10.0 < narrow[1]
    assert rd.spread(many[:8], seed=1)["ci95"] != wide  # the seed draws the resamples
    assert rd.spread([None]) is None and rd.spread([5.0])["std"] == 0.0
    text = rd.spread_text(figures)
    assert text.startswith("mean 24.00 (median 22.50, std 4.08, 95% CI") and text.endswith("n 4)")


def record(image, psnr_adv, **extra):
    return {"image": image, "psnr_in": 40.0, "linf": 4.0, "psnr_clean": 30.0, "psnr_adv": psnr_adv,
            "bpp_clean": 0.5, "bpp_adv": 0.6, "vi": 3.0, "msssim_adv": 0.9, **extra}  # fmt: skip


def test_attack_tables_show_median_and_interval_below_the_mean():
    records = [record("a", 20.0), record("b", 21.0), record("c", 30.0)]
    mean = {k: statistics.fmean(r[k] for r in records) for k in records[0] if k != "image"}
    lines = results_table(records, mean).splitlines()
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["a", "b", "c", "mean", "median", "std", "ci95_low", "ci95_high"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert float(rows["median"][3]) == pytest.approx(21.0)  # psnr_adv's column
    assert float(rows["std"][3]) == pytest.approx(statistics.stdev([20.0, 21.0, 30.0]), abs=1e-3)
    low, high = float(rows["ci95_low"][3]), float(rows["ci95_high"][3])
    assert 20.0 <= low < mean["psnr_adv"] < high <= 30.0


def study_run(root, method, lmbda, images: dict[str, float]):
    """A robust-methods study's run folder as train.py writes it (final_metrics.json, robust_eval/mse/)."""
    run = root / f"{method}_{lmbda}"
    (run / "robust_eval" / "mse").mkdir(parents=True)
    records = [record(name, value) for name, value in images.items()]
    mean = {"psnr_adv": statistics.fmean(images.values()), "psnr_clean": 30.0, "bpp_clean": 0.5 + lmbda,
            "bpp_adv": 0.6 + lmbda, "vi": 3.0}  # fmt: skip
    (run / "robust_eval" / "mse" / "results.json").write_text(json.dumps({"images": records, "mean": mean}))
    final = {"method": method, "lmbda": lmbda, "passes": 10, "robust_eval": {"mse": mean}}
    (run / "final_metrics.json").write_text(json.dumps(final))
    return {"run": str(run), **final}


def test_the_study_table_gives_the_per_image_gain_median_and_interval(tmp_path):
    runs = [
        study_run(tmp_path, "none", 0.01, {"a": 20.0, "b": 22.0, "c": 24.0}),
        study_run(tmp_path, "none", 0.02, {"a": 21.0, "b": 23.0, "c": 25.0}),
        study_run(tmp_path, "mix", 0.01, {"a": 20.5, "b": 22.5, "c": 27.0}),
        study_run(tmp_path, "mix", 0.02, {"a": 22.0, "b": 23.5, "c": 28.0}),
    ]
    rows, columns, _ = method_table(runs)
    mix = next(r for r in rows if r["method"] == "mix")
    assert mix["psnr_adv_mse_gain"] == pytest.approx((0.5 + 0.5 + 3.0 + 1.0 + 0.5 + 3.0) / 6)  # as before
    assert mix["psnr_adv_mse_gain_median"] == pytest.approx(0.75)  # per image, over both rates: 0.75, 0.5, 3
    low, high = (float(v) for v in mix["psnr_adv_mse_gain_ci95"].split(" to "))
    assert 0.5 <= low < mix["psnr_adv_mse_gain"] < high <= 3.0
    assert {"psnr_adv_mse_gain_median", "psnr_adv_mse_gain_ci95"} <= set(columns)


def test_ship_robust_pairs_each_image_with_the_controls():
    from benchmarks.ship_robust import paired_gain

    ours = {"images": ["a", "b", "c"], "per_image": {"psnr_adv": [21.0, 25.0, 30.0]}}
    control = {"images": ["c", "a", "b"], "per_image": {"psnr_adv": [29.0, 20.0, 24.5]}}
    gain = paired_gain(ours, control)
    assert gain["n"] == 3 and gain["median"] == pytest.approx(1.0) and gain["mean"] == pytest.approx(2.5 / 3)
