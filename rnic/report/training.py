"""report.py's training section: one row per finished train.py run (its starting and final figures on
the val set), the trainings that never finished, and the before / after figure."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

from rnic.evaluation.card import read_json
from rnic.image_sets import set_label
from rnic.jobs import ERROR_FILE
from rnic.report.runs import describe, read_card, run_config

TRAIN_COLUMNS = (
    "image_set", "run", "seed", "codec", "quality", "metric", "attack", "step", "start_clean_psnr",
    "final_clean_psnr", "start_attacked_psnr", "final_attacked_psnr", "final_clean_bpp_real",
    "final_attacked_vi",
)  # fmt: skip


def training_rows(root: Path, skipped: list[str]) -> list[dict]:
    """A row per train.py run under `root` with its final_metrics.json; unreadable ones are named in
    `skipped`."""
    trainings = []
    for final in sorted(root.rglob("final_metrics.json")):
        data = read_json(final)
        if data is None:
            skipped.append(f"{final}: not a valid metrics file (truncated or edited?)")
            continue
        start = data.get("start", {})
        config, card = run_config(final.parent), read_card(final.parent) or {}
        trainings.append(
            {
                "run": str(final.parent),
                "image_set": set_label((card.get("data") or {}).get("image_set")),  # val images
                "seed": config.get("seed"),
                **describe(config),
                "step": data.get("step"),
                "start_clean_psnr": start.get("val/clean/psnr"),
                "final_clean_psnr": data.get("val/clean/psnr"),
                "start_attacked_psnr": start.get("val/attacked/psnr"),
                "final_attacked_psnr": data.get("val/attacked/psnr"),
                "final_clean_bpp_real": data.get("val/clean/bpp_real"),
                "final_attacked_vi": data.get("val/attacked/vi"),
            }
        )
    return trainings


def unfinished_trainings(root: Path) -> list[str]:
    """Trainings under `root` with a checkpoint but neither final metrics nor an error, with the reason."""
    unfinished = []
    for last in sorted(root.rglob("checkpoints/last.ckpt")):  # a training that never finished
        folder = last.parent.parent
        if not (folder / "final_metrics.json").is_file() and not (folder / ERROR_FILE).is_file():
            unfinished.append(f"{folder}: unfinished training (no final_metrics.json; resume with ckpt_path)")
    return unfinished


def finetuning_figure(trainings: list[dict]) -> Figure:
    """Val PSNR of each training run's starting and final model, clean and attacked."""
    figure = Figure(figsize=(max(5, 1.6 * len(trainings) + 2), 4.2), layout="constrained")
    axis = figure.subplots()
    keys = ("start_clean_psnr", "final_clean_psnr", "start_attacked_psnr", "final_attacked_psnr")
    keys = [key for key in keys if any(row.get(key) is not None for row in trainings)]  # bars shown
    width = 0.8 / max(1, len(keys))
    for k, key in enumerate(keys):
        values = [row.get(key) or 0.0 for row in trainings]
        axis.bar(
            [i + (k - (len(keys) - 1) / 2) * width for i in range(len(trainings))],
            values,
            width,
            label=key.replace("_", " "),
        )
    # One bar group per run, never a mean over runs; each names the images it was validated on.
    labels = [f"{Path(r['run']).name}\n{r['attack']}\n{r.get('image_set') or ''}" for r in trainings]
    axis.set_xticks(range(len(trainings)), labels, fontsize=7)
    axis.set(ylabel="val PSNR [dB]", title="before / after training")
    axis.legend(fontsize=7)
    return figure


# (label, metric prefix) of the splits that curves show: data.monitor's train crops and test, and val.
CURVE_SPLITS = (("train crops", "monitor/train"), ("val", "val"), ("test", "monitor/test"))
MAX_CURVE_PANELS = 12


def psnr_curves(run: Path) -> dict[str, list[tuple[float, float]]]:
    """Per split and kind ('val attacked'): (codec passes, PSNR) at each validation of the run's
    csv/metrics.csv as training went; empty where the run logged no `val/passes_total`. A validation at
    no more passes than the one before (the best checkpoint validated again after training) is not a
    point of the curve."""
    metrics = run / "csv" / "metrics.csv"
    if not metrics.is_file():
        return {}
    curves: dict[str, list[tuple[float, float]]] = {}
    with open(metrics) as f:
        for row in csv.DictReader(f):
            if not row.get("val/passes_total"):
                continue
            passes = float(row["val/passes_total"])
            for label, prefix in CURVE_SPLITS:
                for kind in ("clean", "attacked"):
                    value = row.get(f"{prefix}/{kind}/psnr")
                    if not value:
                        continue
                    points = curves.setdefault(f"{label} {kind}", [])
                    if not points or passes > points[-1][0]:
                        points.append((passes, float(value)))
    return curves


def curves_figure(trainings: list[dict]) -> Figure | None:
    """Clean (dashed) and attacked (solid) PSNR against codec passes, one panel per run with at least two
    validations: train crops, val and test (data.monitor) as lines. Attacked above clean on val, and
    falling while the train crops' keeps rising, is robust overfitting."""
    runs = [(row["run"], psnr_curves(Path(row["run"]))) for row in trainings]
    runs = [(name, curves) for name, curves in runs if len(curves.get("val clean", [])) >= 2][
        :MAX_CURVE_PANELS
    ]
    if not runs:
        return None
    columns = min(3, len(runs))
    rows = -(-len(runs) // columns)
    figure = Figure(figsize=(4.5 * columns, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    colours = dict(
        zip((label for label, _ in CURVE_SPLITS), ("tab:green", "tab:blue", "tab:red"), strict=True)
    )
    for axis, (name, curves) in zip(axes, runs, strict=False):
        for label, _ in CURVE_SPLITS:
            for kind, style in (("clean", "--"), ("attacked", "-")):
                points = curves.get(f"{label} {kind}")
                if points:
                    passes, psnr = [p[0] for p in points], [p[1] for p in points]
                    axis.plot(passes, psnr, style, marker=".", color=colours[label], label=f"{label} {kind}")
        axis.set(xlabel="codec passes", ylabel="PSNR [dB]", title=Path(name).name)
        axis.title.set_fontsize(8)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    for axis in axes[len(runs) :]:
        axis.set_visible(False)
    return figure
