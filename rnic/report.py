"""Gather the results of many train.py and attack.py runs into tables, plots and one HTML page."""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf

from rnic.io import atomic_write, png_bytes, write_csv
from rnic.jobs import ERROR_FILE

ATTACK_COLUMNS = (
    "run", "codec", "quality", "metric", "weights", "attack", "eps", "images", "psnr_in", "linf",
    "psnr_clean", "psnr_adv", "bpp_clean", "bpp_adv", "msssim_clean", "msssim_adv", "vi", "vi_msssim",
)  # fmt: skip
TRAIN_COLUMNS = (
    "run", "codec", "quality", "metric", "attack", "step", "start_clean_psnr", "final_clean_psnr",
    "start_attacked_psnr", "final_attacked_psnr", "final_clean_bpp_real", "final_attacked_vi",
)  # fmt: skip


def run_config(folder: Path) -> dict:
    """The resolved config of the run that owns `folder` (attack curves keep eps_* subfolders)."""
    for candidate in (folder, folder.parent):
        if (candidate / "config.yaml").is_file():
            return OmegaConf.to_container(OmegaConf.load(candidate / "config.yaml"))
    return {}


def weights_label(weights: str | None) -> str | None:
    """A weights file as `<run folder>/<file>` for rnic checkpoints (every run has a last.ckpt)."""
    if not weights:
        return None
    path = Path(weights)
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name


def describe(config: dict) -> dict:
    model = config.get("model", {})
    codec = model.get("codec", {})
    attack = config.get("attack", {})
    return {
        "codec": codec.get("arch") or str(codec.get("_target_", "?")).rsplit(".", 1)[-1],
        "quality": model.get("quality"),
        "metric": model.get("metric"),
        "weights": "pretrained" if model.get("pretrained") else weights_label(model.get("weights")),
        "attack": str(attack.get("_target_", "?")).rsplit(".", 1)[-1],
    }


def collect(paths: list[Path]) -> tuple[list[dict], list[dict], list[str]]:
    """(attack rows, training rows, failed job folders) under `paths`."""
    attacks, trainings, failed = [], [], []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{str(root)!r}: no such run or sweep folder")
        for results in sorted(root.rglob("results.json")):
            folder = results.parent
            data = json.loads(results.read_text())
            config = run_config(folder)
            eps = config.get("attack", {}).get("eps")
            if folder.name.startswith("eps_"):
                eps = float(folder.name[4:])
            attacks.append({"run": str(folder), **describe(config), "eps": eps, **data["mean"]})
        for final in sorted(root.rglob("final_metrics.json")):
            data = json.loads(final.read_text())
            start = data.get("start", {})
            trainings.append(
                {
                    "run": str(final.parent),
                    **describe(run_config(final.parent)),
                    "step": data.get("step"),
                    "start_clean_psnr": start.get("val/clean/psnr"),
                    "final_clean_psnr": data.get("val/clean/psnr"),
                    "start_attacked_psnr": start.get("val/attacked/psnr"),
                    "final_attacked_psnr": data.get("val/attacked/psnr"),
                    "final_clean_bpp_real": data.get("val/clean/bpp_real"),
                    "final_attacked_vi": data.get("val/attacked/vi"),
                }
            )
        failed += [str(p.parent) for p in sorted(root.rglob(ERROR_FILE))]
    return attacks, trainings, failed


def cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def label(row: dict, *keys: str) -> str:
    def show(key):
        value = row[key]
        text = f"{value:g}" if isinstance(value, float) else f"{value}"
        return text if key in ("codec", "attack") else f"{key}={text}"

    return " ".join(show(k) for k in keys if row.get(k) is not None)


def robustness_figure(attacks: list[dict]) -> Figure:
    """Reconstruction PSNR and VI against input PSNR, one line per codec and operating point."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    lines = defaultdict(list)
    for row in attacks:
        if row.get("psnr_in") is not None:
            lines[label(row, "codec", "quality", "metric", "weights", "attack")].append(row)
    for name, rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["psnr_in"])
        left.plot([r["psnr_in"] for r in rows], [r["psnr_adv"] for r in rows], "o-", label=name)
        right.plot([r["psnr_in"] for r in rows], [r["vi"] for r in rows], "o-", label=name)
    left.set(xlabel="input PSNR [dB]", ylabel="attacked reconstruction PSNR [dB]", title="robustness curves")
    right.set(xlabel="input PSNR [dB]", ylabel="VI [dB]", title="vulnerability index")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    if lines:
        left.legend(fontsize=7)
    return figure


def rate_distortion_figure(attacks: list[dict]) -> Figure:
    """Real bpp against PSNR across qualities, clean and attacked, per codec, attack and budget."""
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axis = figure.subplots()
    lines = defaultdict(list)
    for row in attacks:
        lines[label(row, "codec", "metric", "weights", "attack", "eps")].append(row)
    for name, rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["bpp_clean"])
        (clean,) = axis.plot(
            [r["bpp_clean"] for r in rows], [r["psnr_clean"] for r in rows], "s--", label=f"{name} clean"
        )
        axis.plot([r["bpp_adv"] for r in rows], [r["psnr_adv"] for r in rows], "o-", color=clean.get_color(),
                  label=f"{name} attacked")  # fmt: skip
    axis.set(xlabel="bpp (real bitstreams)", ylabel="PSNR [dB]", title="rate-distortion, clean vs attacked")
    axis.grid(alpha=0.3)
    if lines:
        axis.legend(fontsize=7)
    return figure


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


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def build_report(paths: list[Path], out: Path) -> dict:
    """Write tables (markdown + CSV), PNG plots and report.html to `out`; returns what it found."""
    attacks, trainings, failed = collect(paths)
    if not attacks and not trainings:
        raise FileNotFoundError(f"no results.json or final_metrics.json under {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    if attacks:
        write_csv(out / "attacks.csv", attacks, ATTACK_COLUMNS)
        figures["robustness_curves.png"] = png_bytes(robustness_figure(attacks), dpi=90)
        figures["rate_distortion.png"] = png_bytes(rate_distortion_figure(attacks), dpi=90)
    if trainings:
        write_csv(out / "training.csv", trainings, TRAIN_COLUMNS)
        figures["finetuning.png"] = png_bytes(finetuning_figure(trainings), dpi=90)
    for name, data in figures.items():
        atomic_write(out / name, lambda tmp, d=data: tmp.write_bytes(d))

    sections = []
    if attacks:
        sections.append(("Attacks (means per run and budget, real bitstreams)", attacks, ATTACK_COLUMNS))
    if trainings:
        sections.append(("Training runs (val set)", trainings, TRAIN_COLUMNS))
    text = "# rnic report\n\n" + "".join(
        f"## {title}\n\n{markdown(rows, cols)}\n" for title, rows, cols in sections
    )
    if any((row.get("vi") or 0) < 0 for row in attacks):
        text += (
            "A negative VI means the attacked reconstruction is closer to the clean reconstruction than "
            "the attacked input is to the source: the codec absorbed the perturbation (common on weak "
            "codecs).\n\n"
        )
    if failed:
        text += "## Failed jobs\n\n" + "".join(f"- {f} ({ERROR_FILE})\n" for f in failed)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(text))

    images = "".join(
        f'<h2>{html.escape(name)}</h2><img alt="{name}" src="{data_uri(data)}">'
        for name, data in figures.items()
    )
    tables = "".join(
        f"<h2>{html.escape(title)}</h2>{html_table(rows, cols)}" for title, rows, cols in sections
    )
    failures = "".join(f"<li>{html.escape(f)}</li>" for f in failed)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>rnic report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head>"
        f"<body><h1>rnic report</h1>{tables}{images}"
        + (f"<h2>Failed jobs</h2><ul>{failures}</ul>" if failed else "")
        + "</body></html>"
    )
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(page))
    return {"attacks": attacks, "trainings": trainings, "failed": failed}
