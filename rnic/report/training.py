"""report.py's training section: one row per finished train.py run (its starting and final figures on
the val set), the trainings that never finished, and the before / after figure."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from rnic.card import read_json
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
    axis.set_xticks(
        range(len(trainings)), [f"{Path(r['run']).name}\n{r['attack']}" for r in trainings], fontsize=7
    )
    axis.set(ylabel="val PSNR [dB]", title="before / after training")
    axis.legend(fontsize=7)
    return figure
