"""report.py's page: every section's rows and figures gathered under the run folders, written as CSV
tables, PNG figures, report.md and one self-contained report.html."""

from __future__ import annotations

import base64
import html
import sys
from pathlib import Path

from rnic import rd
from rnic.io import atomic_write, png_bytes, write_csv
from rnic.jobs import ERROR_FILE
from rnic.report.attacks import (
    ATTACK_COLUMNS,
    attack_rows,
    certified_figure,
    rate_attack_figure,
    rate_distortion_figure,
    robustness_figure,
)
from rnic.report.bd import BD_COLUMNS, bd_rows
from rnic.report.defenses import DEFENSE_TABLE_COLUMNS, cost_gain_figure, defense_rows
from rnic.report.methods import collect_runs, gain_figure, method_table
from rnic.report.training import TRAIN_COLUMNS, finetuning_figure, training_rows, unfinished_trainings
from rnic.report.transfer import TRANSFER_COLUMNS, matrix_figure


def collect(paths: list[Path]) -> tuple[list[dict], list[dict], list[str], list[str]]:
    """(attack rows, training rows, failed job folders, skipped runs with the reason) under `paths`.
    A run whose record is unreadable or unfinished is skipped and named, never counted."""
    attacks, trainings, failed, skipped = [], [], [], []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{str(root)!r}: no such run or sweep folder")
        attacks += attack_rows(root, skipped)
        trainings += training_rows(root, skipped)
        failed += [str(p.parent) for p in sorted(root.rglob(ERROR_FILE))]
        skipped += unfinished_trainings(root)
    return attacks, trainings, failed, skipped


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


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def build_report(paths: list[Path], out: Path, transfer: list[dict] | None = None) -> dict:
    """Write tables (markdown + CSV), PNG plots and report.html to `out`; returns what it found.
    `transfer`: the rows of a transfer matrix (rnic.report.transfer), shown as a table and heatmaps."""
    attacks, trainings, failed, skipped = collect(paths)
    for reason in skipped:
        print(f"warning: skipped {reason}", file=sys.stderr)
    if not attacks and not trainings:
        raise FileNotFoundError(
            f"no finished run (results.json or final_metrics.json) under {', '.join(map(str, paths))}"
        )
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    method_runs = collect_runs(paths)  # experiment=robust_methods: one row per training method
    methods, method_columns, method_notes = method_table(method_runs) if method_runs else ([], (), [])
    if methods:
        write_csv(out / "robust_methods.csv", methods, method_columns)
        figures["robust_gain_vs_compute.png"] = png_bytes(gain_figure(methods, method_runs), dpi=90)
    defenses = defense_rows(attacks)
    if defenses:
        write_csv(out / "defenses.csv", defenses, DEFENSE_TABLE_COLUMNS)
        figures["defense_cost_gain.png"] = png_bytes(cost_gain_figure(defenses), dpi=90)
    if attacks:
        write_csv(out / "attacks.csv", attacks, ATTACK_COLUMNS)
        figures["robustness_curves.png"] = png_bytes(robustness_figure(attacks), dpi=90)
        figures["rate_distortion.png"] = png_bytes(rate_distortion_figure(attacks), dpi=90)
        if any(row.get("certified") for row in attacks):
            figures["certified_curve.png"] = png_bytes(certified_figure(attacks), dpi=90)
        rate_attacks = [row for row in attacks if row.get("encode_s_adv") is not None]
        if rate_attacks:
            figures["rate_attacks.png"] = png_bytes(rate_attack_figure(rate_attacks), dpi=90)
    if trainings:
        write_csv(out / "training.csv", trainings, TRAIN_COLUMNS)
        figures["finetuning.png"] = png_bytes(finetuning_figure(trainings), dpi=90)
    if transfer:
        figures["transfer_matrix.png"] = png_bytes(matrix_figure(transfer), dpi=90)
    for name, data in figures.items():
        atomic_write(out / name, lambda tmp, d=data: tmp.write_bytes(d))

    sections = []
    if methods:
        sections.append(
            ("Robust training methods (means over rate points; gains and BD vs the clean control `none`)",
             methods, method_columns)
        )  # fmt: skip
    if defenses:
        title = (
            "Defences (clean cost vs no defence; attacked PSNR and VI non-adaptive vs adaptive; gain: "
            "attacked PSNR over no defence, the adaptive one is what survives)"
        )
        sections.append((title, defenses, DEFENSE_TABLE_COLUMNS))
    bd = [row for row in bd_rows(attacks) if row["points"] >= 2]
    if bd:
        write_csv(out / "bd.csv", bd, BD_COLUMNS)
        title = "Robust rate-distortion: BD-rate [%] and BD-PSNR [dB] across qualities (real bitstreams)"
        sections.append((title, bd, BD_COLUMNS))
    if transfer:
        title = "Transfer matrix (rows: attacked on; columns: coded by; the diagonal is white-box)"
        sections.append((title, transfer, TRANSFER_COLUMNS))
    if attacks:
        sections.append(("Attacks (means per run and budget, real bitstreams)", attacks, ATTACK_COLUMNS))
    if trainings:
        sections.append(("Training runs (val set)", trainings, TRAIN_COLUMNS))
    text = "# rnic report\n\n" + "".join(
        f"## {title}\n\n{markdown(rows, cols)}\n" for title, rows, cols in sections
    )
    if any((row.get("vi") or 0) < 0 for row in attacks):
        text += f"Note: {rd.NEGATIVE_VI}.\n\n"
    text += "".join(f"Note: {note}.\n\n" for note in method_notes)
    if failed:
        text += "## Failed jobs\n\n" + "".join(f"- {f} ({ERROR_FILE})\n" for f in failed)
    if skipped:
        text += "## Runs left out\n\n" + "".join(f"- {reason}\n" for reason in skipped)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(text))

    images = "".join(
        f'<h2>{html.escape(name)}</h2><img alt="{name}" src="{data_uri(data)}">'
        for name, data in figures.items()
    )
    tables = "".join(
        f"<h2>{html.escape(title)}</h2>{html_table(rows, cols)}" for title, rows, cols in sections
    )
    failures = "".join(f"<li>{html.escape(f)}</li>" for f in failed)
    left_out = "".join(f"<li>{html.escape(reason)}</li>" for reason in skipped)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>rnic report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head>"
        f"<body><h1>rnic report</h1>{tables}{images}"
        + (f"<h2>Failed jobs</h2><ul>{failures}</ul>" if failed else "")
        + (f"<h2>Runs left out</h2><ul>{left_out}</ul>" if skipped else "")
        + "</body></html>"
    )
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(page))
    return {
        "attacks": attacks, "trainings": trainings, "failed": failed, "skipped": skipped, "defenses": defenses
    }  # fmt: skip
