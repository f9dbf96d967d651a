"""report.py's page: every section's rows and figures gathered under the run folders, written as CSV
tables, PNG figures, report.md and one self-contained report.html."""

from __future__ import annotations

import base64
import html
import sys
from pathlib import Path

from rnic import rd
from rnic.io import atomic_write, write_csv
from rnic.jobs import ERROR_FILE
from rnic.report.attacks import (
    ATTACK_COLUMNS,
    attack_rows,
    certified_figure,
    certified_rate_figure,
    rate_attack_figure,
    rate_distortion_figure,
    robustness_figure,
)
from rnic.report.bd import BD_COLUMNS, bd_rows
from rnic.report.defenses import DEFENSE_TABLE_COLUMNS, cost_gain_figure, defense_rows
from rnic.report.methods import collect_runs, gain_figure, method_table
from rnic.report.paper import plus_minus, seed_aggregate, seed_groups, write_figure, write_tex
from rnic.report.runs import run_config
from rnic.report.training import (
    TRAIN_COLUMNS,
    curves_figure,
    finetuning_figure,
    training_rows,
    unfinished_trainings,
)
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


# What a reader sees above a column of report.html (units in brackets); other columns show their key.
HEADERS = {
    "psnr_in": "input PSNR [dB]", "linf": "L-inf [1/255]", "psnr_clean": "clean PSNR [dB]",
    "psnr_adv": "attacked PSNR [dB]", "bpp_clean": "clean rate [bpp]", "bpp_adv": "attacked rate [bpp]",
    "bpp_ratio": "rate ratio", "msssim_clean": "clean MS-SSIM", "msssim_adv": "attacked MS-SSIM",
    "vi": "VI [dB]", "vi_msssim": "VI MS-SSIM [dB]", "psnr_jpeg": "JPEG PSNR [dB]", "bpp_jpeg": "JPEG [bpp]",
    "psnr_webp": "WebP PSNR [dB]", "bpp_webp": "WebP [bpp]", "eps": "budget", "images": "images",
    "encode_s_clean": "clean encode [s]", "encode_s_adv": "attacked encode [s]",
    "decode_s_clean": "clean decode [s]", "decode_s_adv": "attacked decode [s]",
    "passes": "codec passes", "wall_s": "wall time [s]", "clean_psnr": "clean PSNR [dB]",
    "clean_bpp": "clean rate [bpp]", "bd_rate_pct": "BD-rate [%]", "bd_psnr_db": "BD-PSNR [dB]",
    "worst_attack": "worst attack", "worst_psnr_adv": "worst attacked PSNR [dB]", "max_vi": "highest VI [dB]",
    "psnr_cost": "clean PSNR cost [dB]", "bpp_cost": "rate cost [bpp]",
    "psnr_adv_undefended": "attacked PSNR, no defence [dB]",
    "psnr_adv_nonadaptive": "attacked PSNR, non-adaptive [dB]",
    "psnr_adv_adaptive": "attacked PSNR, adaptive [dB]", "image_set": "images (set #hash, n)", "n": "runs",
    "vi_nonadaptive": "VI, non-adaptive [dB]",
    "vi_adaptive": "VI, adaptive [dB]", "gain_nonadaptive": "gain, non-adaptive [dB]",
    "gain_adaptive": "gain, adaptive [dB]", "bd_rate": "BD-rate [%]", "bd_psnr": "BD-PSNR [dB]",
}  # fmt: skip
FIGURE_TITLES = {
    "robust_gain_vs_compute.png": "Robust training methods: VI reduction vs compute, and attacked RD curves",
    "defense_cost_gain.png": "Defenses: clean cost against the attacked PSNR they win",
    "robustness_curves.png": "Attacked PSNR and VI against the input PSNR the attack leaves",
    "rate_distortion.png": "Rate-distortion clean and attacked, with JPEG and WebP at the same rates",
    "certified_curve.png": "Center smoothing: certified bound against the attacked PSNR",
    "certified_rate.png": "Noise encoder: certified bound on the rate against the attacked rate",
    "rate_attacks.png": "Rate attacks: bitstream size and coding time",
    "finetuning.png": "Finetuning: clean and attacked figures before and after",
    "psnr_curves.png": "PSNR against codec passes on train crops, val and test: clean and attacked",
    "transfer_matrix.png": "Transfer matrix: attacked on (rows), coded by (columns)",
}
SUMMARY_COLUMNS = ("image_set", "codec", "quality", "weights", "defense", "psnr_clean", "bpp_clean",
                   "worst_psnr_adv", "worst_attack", "max_vi")  # fmt: skip


def cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def shown(value) -> str:
    """A figure as a reader reads it: about three significant digits; a missing one as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != value:
        return "n/a"
    size = abs(value)
    return f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= 1 \
        else f"{value:.2g}"  # fmt: skip


def summary_rows(attacks: list[dict]) -> list[dict]:
    """Per image set and codec (codec, quality, weights, defense): its clean figures, and the worst attacked
    PSNR over its attack runs with the attack that reached it, and its highest VI."""
    groups: dict[tuple, list[dict]] = {}
    for row in attacks:
        groups.setdefault(tuple(row.get(k) for k in SUMMARY_COLUMNS[:5]), []).append(row)
    rows = []
    for key, group in groups.items():
        attacked = [r for r in group if r.get("psnr_adv") is not None and r.get("attack") != "NoAttack"]
        worst = min(attacked, key=lambda r: r["psnr_adv"]) if attacked else None
        rows.append({
            **dict(zip(SUMMARY_COLUMNS[:5], key, strict=True)),
            "psnr_clean": rd.mean_or_none(r.get("psnr_clean") for r in group),
            "bpp_clean": rd.mean_or_none(r.get("bpp_clean") for r in group),
            "worst_psnr_adv": worst and worst["psnr_adv"],
            "worst_attack": worst and f"{worst['attack']} (budget {shown(worst.get('eps'))})",
            "max_vi": max((r["vi"] for r in group if r.get("vi") is not None), default=None),
        })  # fmt: skip
    return rows


# Runs repeated over seeds: what tells the groups apart, and the figures aggregated (mean, std, n).
SEED_KEYS = ("kind", "image_set", "codec", "quality", "metric", "weights", "attack", "eps", "defense")
SEED_FIGURES = (
    "psnr_clean", "bpp_clean", "psnr_adv", "bpp_adv", "vi",
    "start_clean_psnr", "final_clean_psnr", "start_attacked_psnr", "final_attacked_psnr", "final_attacked_vi",
)  # fmt: skip
SEED_COLUMNS = (*SEED_KEYS, "n", "seeds", *(f"{f}_{s}" for f in SEED_FIGURES for s in ("mean", "std")))
SEED_DISPLAY = (*SEED_KEYS, "n", "seeds", *SEED_FIGURES)


def run_settings(row: dict) -> dict:
    """What decides a report row's figures: its run's config, budget and image set."""
    return {"config": run_config(Path(row["run"])), "eps": row.get("eps"), "images": row.get("image_set")}


def seed_rows(attacks: list[dict], trainings: list[dict]) -> list[dict]:
    """Mean, standard deviation and n of each figure over runs whose configs differ only in `seed`: attack
    runs (and budgets) and training runs; only groups of two runs or more."""
    rows = []
    for kind, runs in (("attack", attacks), ("training", trainings)):
        groups = [g for g in seed_groups(runs, run_settings) if len(g) > 1]
        rows += [{**row, "kind": kind} for row in seed_aggregate(groups, SEED_KEYS, SEED_FIGURES)]
    return rows


def seed_display(rows: list[dict]) -> list[dict]:
    """The seed table as a reader reads it: `mean ± std` per figure."""
    return [
        {**row, **{f: plus_minus(row, f, shown) for f in SEED_FIGURES if row.get(f"{f}_mean") is not None}}
        for row in rows
    ]


def markdown(rows: list[dict], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """A table in its own box, scrolled sideways when wider than the page; only the columns that hold
    a figure in some row."""
    columns = tuple(c for c in columns if any(row.get(c) not in (None, "") for row in rows))
    head = "".join(f"<th>{html.escape(HEADERS.get(c, c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(shown(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


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

    def table(stem: str, rows: list[dict], columns) -> None:  # CSV and LaTeX, side by side
        write_csv(out / f"{stem}.csv", rows, tuple(columns))
        write_tex(out / f"{stem}.tex", rows, columns, HEADERS, shown)

    figures = {}
    method_runs = collect_runs(paths)  # experiment=robust_methods: one row per training method
    methods, method_columns, method_notes = method_table(method_runs) if method_runs else ([], (), [])
    if methods:
        table("robust_methods", methods, method_columns)
        figures["robust_gain_vs_compute.png"] = gain_figure(methods, method_runs)
    defenses = defense_rows(attacks)
    if defenses:
        table("defenses", defenses, DEFENSE_TABLE_COLUMNS)
        figures["defense_cost_gain.png"] = cost_gain_figure(defenses)
    if attacks:
        table("attacks", attacks, ATTACK_COLUMNS)
        figures["robustness_curves.png"] = robustness_figure(attacks)
        figures["rate_distortion.png"] = rate_distortion_figure(attacks)
        if any(row.get("certified") for row in attacks):
            figures["certified_curve.png"] = certified_figure(attacks)
        if any(row.get("certified_rate") for row in attacks):
            figures["certified_rate.png"] = certified_rate_figure(attacks)
        rate_attacks = [row for row in attacks if row.get("encode_s_adv") is not None]
        if rate_attacks:
            figures["rate_attacks.png"] = rate_attack_figure(rate_attacks)
    if trainings:
        table("training", trainings, TRAIN_COLUMNS)
        figures["finetuning.png"] = finetuning_figure(trainings)
        curves = curves_figure(trainings)
        if curves is not None:
            figures["psnr_curves.png"] = curves
    if transfer:
        figures["transfer_matrix.png"] = matrix_figure(transfer)
    figures = {name: write_figure(out, name.removesuffix(".png"), figure) for name, figure in figures.items()}
    seeds = seed_rows(attacks, trainings)
    if seeds:
        table("seeds", seeds, SEED_COLUMNS)

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
        table("bd", bd, BD_COLUMNS)
        title = "Robust rate-distortion: BD-rate [%] and BD-PSNR [dB] across qualities (real bitstreams)"
        sections.append((title, bd, BD_COLUMNS))
    if transfer:
        title = "Transfer matrix (rows: attacked on; columns: coded by; the diagonal is white-box)"
        sections.append((title, transfer, TRANSFER_COLUMNS))
    if seeds:
        title = "Means ± standard deviation over runs that differ only in their seed (n runs)"
        sections.append((title, seed_display(seeds), SEED_DISPLAY))
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
        f'<h2>{html.escape(FIGURE_TITLES.get(name, name))}</h2><img alt="{name}" src="{data_uri(data)}">'
        for name, data in figures.items()
    )
    summary = summary_rows(attacks)
    if summary:
        table("summary", summary, SUMMARY_COLUMNS)
        tables = (
            "<h2>Summary (per image set and codec: clean figures, the worst attacked PSNR over its attack "
            f"runs and the attack that reached it, the highest VI)</h2>{html_table(summary, SUMMARY_COLUMNS)}"
        )
    else:
        tables = ""
    tables += "".join(
        f"<h2>{html.escape(title)}</h2>{html_table(rows, cols)}" for title, rows, cols in sections
    )
    failures = "".join(f"<li>{html.escape(f)}</li>" for f in failed)
    left_out = "".join(f"<li>{html.escape(reason)}</li>" for reason in skipped)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>rnic report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}"
        "th{background:#f3f3f3}.scroll{overflow-x:auto;max-width:100%;margin-bottom:1em}"
        "img{max-width:100%}h2{font-size:1.1em}</style></head>"
        f"<body><h1>rnic report</h1>{tables}{images}"
        + (f"<h2>Failed jobs</h2><ul>{failures}</ul>" if failed else "")
        + (f"<h2>Runs left out</h2><ul>{left_out}</ul>" if skipped else "")
        + "</body></html>"
    )
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(page))
    return {
        "attacks": attacks, "trainings": trainings, "failed": failed, "skipped": skipped, "defenses": defenses
    }  # fmt: skip
