"""Regressions of the correctness pass: each test failed before its fix."""

import json
import math
import subprocess
import sys

import pytest
import torch

from rnic import rd
from rnic.attacks import PGD, ThresholdAttack, to_8bit
from rnic.codecs import build_codec
from rnic.evaluation import evaluate_robustness
from rnic.training import train
from tests.conftest import ROOT, TINY, compose_config


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_8bit_delivery_keeps_every_level_of_a_saturated_linf_sample(k):
    source = torch.arange(256, dtype=torch.float32).view(1, 1, 1, 256) / 255
    eps = k / 255
    for sign in (1, -1):
        pushed = (source + sign * eps).clamp(0, 1)  # what PGD's projection leaves at the boundary
        levels = (to_8bit(source, pushed) * 255 - source * 255).round()
        reachable = ((pushed - source) * 255).round()  # the clip to [0, 1] leaves fewer near the ends
        assert torch.equal(levels, reachable), (k, sign)
        assert (to_8bit(source, pushed) - source).abs().max() <= eps + 1e-7


@pytest.mark.parametrize("threat", ["l2", "mse"])
def test_8bit_delivery_keeps_l2_and_mse_budgets_and_most_of_the_perturbation(trained_codec, photos, threat):
    x = torch.round(photos * 255) / 255
    eps = {"l2": 1.0, "mse": 1e-4}[threat]
    exact = PGD(trained_codec, threat=threat, eps=eps, steps=3, round_8bit=False)(x)
    delivered = PGD(trained_codec, threat=threat, eps=eps, steps=3, round_8bit=True)(x)
    assert torch.equal(torch.round(delivered * 255) / 255, delivered)
    norm = (delivered.double() - x.double()).flatten(1).norm(dim=1)  # float32 sums err by ~1e-5 here
    radius = eps if threat == "l2" else math.sqrt(eps * x[0].numel())
    assert (norm <= radius * (1 + 1e-6)).all()
    # Rounding toward the source kept about 80% of the norm; nearest rounding with repair keeps >= 97%.
    assert (norm >= 0.97 * (exact.double() - x.double()).flatten(1).norm(dim=1)).all()


def test_degenerate_figures_have_one_definition():
    x = torch.rand(2, 3, 16, 16)
    assert torch.isinf(rd.psnr(x, x)).all()  # identical images: unbounded, as torchmetrics says
    from torchmetrics.functional.image import peak_signal_noise_ratio

    assert torch.isinf(peak_signal_noise_ratio(x[:1], x[:1], data_range=1.0))
    x_hat = x * 0.9
    moved = x + 0.01
    assert torch.isnan(rd.vulnerability_index(x_hat, x_hat, x, x)).all()  # nothing perturbed
    assert torch.isnan(rd.vulnerability_index(x_hat, x_hat, moved, x)).all()  # a -inf is no figure
    assert torch.isfinite(rd.vulnerability_index(x_hat + 0.01, x_hat, moved, x)).all()


def test_ms_ssim_bound_is_the_metrics_own():
    x = torch.rand(1, 3, rd.MS_SSIM_MIN_SIDE, rd.MS_SSIM_MIN_SIDE)
    assert torch.isfinite(rd.ms_ssim(x, x * 0.9)).all()
    with pytest.raises(ValueError):
        rd.ms_ssim(x[..., :-1, :-1], x[..., :-1, :-1])
    assert rd.MS_SSIM_MIN_SIDE == 176


def test_the_codec_says_its_stride():
    factorized = build_codec("bmshj2018_factorized", N=8, M=8).eval()
    assert rd.stride(factorized) == 16 and rd.stride(build_codec("bmshj2018_hyperprior", N=8, M=8)) == 64
    x_hat, _, _ = rd.forward_padded(factorized, torch.rand(1, 3, 80, 80))
    assert x_hat.shape[-2:] == (80, 80)


def test_the_threshold_attack_scores_its_last_iterate(trained_codec, photos):
    # One step with a loose threshold: the only admissible iterates are the start and the one after the
    # step, and the step raises the objective, so the result is the last iterate.
    attack = ThresholdAttack(
        trained_codec, eps=1e-2, steps=1, lr=0.01, init=1 / 255, select="best", round_8bit=False
    )
    x_adv = attack(photos)
    start = ThresholdAttack(
        trained_codec, eps=1e-2, steps=1, lr=1e-12, init=1 / 255, select="best", round_8bit=False
    )(photos)
    assert (rd.mse(x_adv, start) > 1e-6).all()  # not the starting point


def test_importing_the_attacks_does_not_import_lightning():
    code = (
        "import sys, rnic.attacks, rnic.codecs, rnic.config, rnic.coding; print('lightning' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_report_py_starts_without_the_codec_and_metric_libraries():
    # report.py reads results files: CompressAI, torchmetrics and Lightning (~3 s, 5 s, 5 s to import)
    # are loaded only by what uses them.
    libraries = "{'compressai', 'torchmetrics', 'lightning'}"
    code = f"import sys, rnic.commands.report; print(sorted({libraries} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_small_val_crop_neither_crashes_nor_logs_nan(tiny_cfg, tmp_path, capsys):
    train(tiny_cfg("data.val_crop=170", "attack=linf", "attack.steps=1"))  # 161..175 crashed before
    final = strict_json(tmp_path / "final_metrics.json")
    assert "val/clean/ms_ssim" not in final and final["val/clean/psnr"] is not None
    assert "n/a" in capsys.readouterr().out  # the MS-SSIM row of the final table
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "ms_ssim" not in header.replace("train/ms_ssim", "")


def test_ms_ssim_is_logged_from_its_minimum_size(tiny_cfg, tmp_path):
    results = train(tiny_cfg(f"data.val_crop={rd.MS_SSIM_MIN_SIDE}"))
    assert 0 < results["val/clean/ms_ssim"] < 1


def test_a_train_split_smaller_than_a_batch_stops_before_training(tiny_cfg, tmp_path):
    with pytest.raises(
        ValueError, match=r"12 usable image\(s\) x data.train_repeats=1, fewer than data.batch_size=16"
    ):
        train(tiny_cfg("data.train_repeats=1", "data.batch_size=16"))
    assert not (tmp_path / "checkpoints").exists()


def test_resume_needs_only_the_checkpoint(tmp_path, trained_checkpoint):
    weights = tmp_path / "start.ckpt"  # finetuned from a file that is gone by the time the run resumes
    weights.write_bytes(trained_checkpoint.read_bytes())
    first = compose_config(tmp_path / "first", *TINY, "model.N=32", "model.M=48", f"model.weights={weights}",
                           "trainer.max_steps=2")  # fmt: skip
    train(first)
    weights.unlink()
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    # No widths on the command line: the checkpoint's run config supplies them.
    resumed = compose_config(tmp_path / "resumed", f"ckpt_path={last}", "trainer.max_steps=4")
    results = train(resumed)
    assert strict_json(tmp_path / "resumed" / "final_metrics.json")["step"] == 4 and results["val/clean/psnr"]
    config = (tmp_path / "resumed" / "config.yaml").read_text()
    assert "'N': 32" in config and str(tmp_path / "resumed" / "checkpoints") in config

    conflicting = compose_config(tmp_path / "other", f"ckpt_path={last}", "model.N=24")
    with pytest.raises(ValueError, match=r"holds another architecture .*model.codec.N: 32 -> 24"):
        train(conflicting)


def test_an_error_is_one_line_and_leaves_no_folder(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", "model.quality=9", f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: model.quality=9 is out of range")
    assert "Traceback" not in result.stderr and not run_dir.exists()


def test_a_missing_file_is_refused_before_torch_loads(tmp_path):
    code = (
        "import sys; sys.argv = ['attack.py', 'model.weights=/nonexistent.ckpt', 'hydra.run.dir="
        f"{tmp_path / 'run'}']\n"
        "import runpy\n"
        "try:\n    runpy.run_path('attack.py', run_name='__main__')\n"
        "except SystemExit as e:\n    print('torch' in sys.modules, e.code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split()[-2:] == ["False", "1"], result.stderr
    assert "error: model.weights='/nonexistent.ckpt': no such file" in result.stderr


def attack_overrides(checkpoint, *more, attack=("attack=linf", "attack.steps=2")):
    return [
        "model=bmshj2018_hyperprior",
        "model.N=32",
        "model.M=48",
        f"model.weights={checkpoint}",
        "data.val_crop=192",
        "max_images=1",
        *attack,
        *more,
    ]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            [
                "model=bmshj2018_factorized",
                "model.weights=null",
                "model.N=16",
                "model.M=16",
                "model.allow_random_init=true",
            ],
            "model.codec.arch",
        ),
        (["attack.round_8bit=false"], "attack.round_8bit"),
        (["data.val_crop=176"], "data.val_crop"),
        (["attack.seed=1"], "attack.seed"),
        (["attack.eps=0.0627"], "eps: 0.031"),
    ],
)
def test_a_rerun_with_other_settings_is_refused(tmp_path, trained_checkpoint, change, named):
    evaluate_robustness(compose_config(tmp_path, *attack_overrides(trained_checkpoint), config_name="attack"))
    config = (tmp_path / "config.yaml").read_text()
    results = (tmp_path / "results.json").read_text()
    cfg = compose_config(tmp_path, *attack_overrides(trained_checkpoint, *change), config_name="attack")
    with pytest.raises(ValueError, match=f"holds results of another run .*{named}"):
        evaluate_robustness(cfg)
    assert (tmp_path / "config.yaml").read_text() == config and (
        tmp_path / "results.json"
    ).read_text() == results


def test_a_rerun_with_changed_weights_is_refused(tmp_path, trained_checkpoint):
    weights = tmp_path / "weights.ckpt"
    weights.write_bytes(trained_checkpoint.read_bytes())
    run = tmp_path / "run"
    evaluate_robustness(compose_config(run, *attack_overrides(weights), config_name="attack"))
    state = torch.load(weights, weights_only=True)
    state["state_dict"]["codec.g_a.0.bias"] += 0.01
    torch.save(state, weights)
    with pytest.raises(ValueError, match="weights_sha256"):
        evaluate_robustness(compose_config(run, *attack_overrides(weights), config_name="attack"))


def test_no_attack_gives_null_not_100_db(tmp_path, trained_checkpoint):
    cfg = compose_config(
        tmp_path, *attack_overrides(trained_checkpoint, attack=["attack=none"]), config_name="attack"
    )
    (mean,) = evaluate_robustness(cfg)
    (record,) = strict_json(tmp_path / "results.json")["images"]
    assert record["psnr_in"] is None and record["vi"] is None and record["linf"] == 0
    assert mean["psnr_in"] is None and mean["psnr_adv"] == pytest.approx(record["psnr_clean"])


def test_report_labels_tell_runs_apart_and_print_short_budgets():
    from rnic.report.attacks import robustness_figure
    from rnic.report.runs import describe, label
    from rnic.report.training import finetuning_figure

    rows = []
    for run in ("adversarial", "control"):
        config = {
            "model": {
                "codec": {"arch": "bmshj2018_hyperprior"},
                "weights": f"logs/{run}/checkpoints/last.ckpt",
            },
            "attack": {"_target_": "rnic.attacks.PGD"},
        }
        rows.append({**describe(config), "eps": 0.1 + 0.2, "psnr_in": 30.0, "psnr_adv": 20.0, "vi": -1.0})
    assert label(rows[0], "weights", "eps") == "weights=adversarial/last.ckpt eps=0.3"
    (legend,) = robustness_figure(rows).legends  # one, under both panels
    assert len({t.get_text() for t in legend.get_texts()}) == 2

    trainings = [{"run": "a", "attack": "NoAttack", "start_clean_psnr": None, "final_clean_psnr": 24.0}]
    texts = [t.get_text() for t in finetuning_figure(trainings).axes[0].get_legend().get_texts()]
    assert texts == ["final clean psnr"]  # no bars, no legend entries, for figures a run lacks


def test_the_report_tabulates_bd_of_attacked_and_finetuned_curves():
    from rnic.report.bd import bd_rows

    def row(weights, quality, bpp, psnr, scale=1.0, drop=0.0):
        return {"codec": "mbt2018", "metric": "mse", "attack": "APGD", "eps": 0.0157, "weights": weights,
                "quality": quality, "bpp_clean": bpp, "psnr_clean": psnr, "bpp_adv": bpp * scale,
                "psnr_adv": psnr - drop}  # fmt: skip

    points = [(1, 0.2, 28.0), (2, 0.35, 30.0), (3, 0.6, 32.5), (4, 0.9, 34.5)]
    rows = [row("pretrained", q, b, p, scale=1.1) for q, b, p in points]  # attacked: 10% more rate
    rows += [row("robust/best.ckpt", q, b, p, drop=0.5) for q, b, p in points]  # attacked: -0.5 dB
    table = {(r["curve"], r["test"]): r for r in bd_rows(rows)}
    assert table[("mbt2018 mse pretrained APGD eps=0.0157", "attacked")]["bd_rate"] == pytest.approx(
        10, abs=1e-6
    )
    attacked = table[("mbt2018 mse robust/best.ckpt APGD eps=0.0157", "attacked")]
    assert attacked["bd_psnr"] == pytest.approx(-0.5, abs=1e-6)
    finetuned = table[("mbt2018 mse APGD eps=0.0157 (clean)", "robust/best.ckpt")]
    assert finetuned["anchor"] == "pretrained" and finetuned["bd_rate"] == pytest.approx(0, abs=1e-9)


def test_each_defence_makes_its_own_curves_in_the_report():
    """Runs behind different defences (and a defence attacked non-adaptively) are separate curves: their
    BD rows and figure lines never pool points of two set-ups."""
    from rnic.report.attacks import rate_distortion_figure
    from rnic.report.bd import bd_rows

    def row(defense, adaptive, bpp, psnr):
        return {"codec": "mbt2018", "metric": "mse", "attack": "APGD", "eps": 0.0157, "weights": "pretrained",
                "defense": defense, "adaptive": adaptive, "bpp_clean": bpp, "psnr_clean": psnr,
                "bpp_adv": bpp * 1.1, "psnr_adv": psnr - 1.0, "bpp_jpeg": bpp,
                "psnr_jpeg": psnr - 3}  # fmt: skip

    points = [(0.2, 28.0), (0.35, 30.0), (0.6, 32.5)]
    rows = [row(d, a, b, p - 0.3 * k) for k, (d, a) in enumerate([("none", True), ("jpeg", True),
            ("jpeg", False)]) for b, p in points]  # fmt: skip
    attacked = {r["curve"]: r for r in bd_rows(rows) if r["test"] == "attacked"}
    assert set(attacked) == {
        "mbt2018 mse pretrained APGD eps=0.0157",
        "mbt2018 mse pretrained jpeg APGD eps=0.0157",
        "mbt2018 mse pretrained jpeg non-adaptive APGD eps=0.0157",
    }
    assert all(r["points"] == 3 for r in attacked.values())
    labels = [t.get_text() for t in rate_distortion_figure(rows).legends[0].get_texts()]
    assert sum("defense=jpeg APGD" in t for t in labels) == 1  # one entry per line, adaptive only
    assert not any("non-adaptive" in t for t in labels)
    assert labels[-4:] == ["clean", "attacked", "JPEG at the clean rate", "WebP at the clean rate"]  # styles
