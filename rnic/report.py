"""Gather the results of many train.py and attack.py runs into tables, plots and one HTML page."""

from __future__ import annotations

import base64
import html
import sys
from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf

from rnic import rd, study
from rnic.bdrate import bd_psnr, bd_rate
from rnic.card import CARD_FILE, read_json
from rnic.classical import LABELS, REFERENCES
from rnic.defense_report import DEFENSE_COLUMNS, cost_gain_figure, defense_rows
from rnic.io import atomic_write, png_bytes, write_csv
from rnic.jobs import ERROR_FILE
from rnic.transfer import COLUMNS as TRANSFER_COLUMNS
from rnic.transfer import matrix_figure

ATTACK_COLUMNS = (
    "run", "codec", "quality", "metric", "weights", "attack", "eps", "defense", "adaptive", "images",
    "psnr_in", "linf",
    "psnr_clean", "psnr_adv", "bpp_clean", "bpp_adv", "bpp_ratio", "msssim_clean", "msssim_adv", "vi",
    "psnr_jpeg", "bpp_jpeg", "psnr_webp", "bpp_webp",
    "vi_msssim", "encode_s_clean", "encode_s_adv", "decode_s_clean", "decode_s_adv",
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


def read_card(folder: Path) -> dict | None:
    path = folder / CARD_FILE
    return read_json(path) if path.is_file() else None


def collect(paths: list[Path]) -> tuple[list[dict], list[dict], list[str], list[str]]:
    """(attack rows, training rows, failed job folders, skipped runs with the reason) under `paths`.
    A run whose record is unreadable or unfinished is skipped and named, never counted."""
    attacks, trainings, failed, skipped = [], [], [], []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{str(root)!r}: no such run or sweep folder")
        for results in sorted(root.rglob("results.json")):
            folder = results.parent
            data = read_json(results)
            if data is None or not isinstance(data.get("mean"), dict):
                skipped.append(f"{results}: not a valid results file (truncated or edited?)")
                continue
            if data.get("complete") is False:
                done = len(data.get("images") or [])
                skipped.append(f"{folder}: unfinished, {done} of {data.get('images_planned')} image(s) done")
                continue
            config = run_config(folder)
            eps = config.get("attack", {}).get("eps")
            if folder.name.startswith("eps_"):
                eps = float(folder.name[4:])
            weights = (config.get("model") or {}).get("weights")
            defense = {  # defense=none runs have none; attack.adaptive matters only behind a defence
                "defense": "+".join(data.get("defense") or ["none"]),
                "adaptive": data.get("adaptive", True),
                "weights_path": str(Path(weights).resolve()) if weights else None,
            }
            card = read_card(folder)  # what the run says it evaluated; results.json for older runs
            means = card["means"] if card else data["mean"]
            row = {"run": str(folder), **describe(config), "eps": eps, **defense, **means}
            attacks.append({**row, "certified": data["certified"]} if data.get("certified") else row)
        for final in sorted(root.rglob("final_metrics.json")):
            data = read_json(final)
            if data is None:
                skipped.append(f"{final}: not a valid metrics file (truncated or edited?)")
                continue
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
        for last in sorted(root.rglob("checkpoints/last.ckpt")):  # a training that never finished
            folder = last.parent.parent
            if not (folder / "final_metrics.json").is_file() and not (folder / ERROR_FILE).is_file():
                skipped.append(
                    f"{folder}: unfinished training (no final_metrics.json; resume with ckpt_path)"
                )
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
        for reference, style in zip(REFERENCES, (":", "-."), strict=True):  # at the learned clean rates
            if all(r.get(f"psnr_{reference}") is not None for r in rows):
                axis.plot([r[f"bpp_{reference}"] for r in rows], [r[f"psnr_{reference}"] for r in rows],
                          style, marker=".", color=clean.get_color(), alpha=0.7,
                          label=f"{LABELS[reference]} at {name}'s rates")  # fmt: skip
    axis.set(xlabel="bpp (real bitstreams)", ylabel="PSNR [dB]", title="rate-distortion, clean vs attacked")
    axis.grid(alpha=0.3)
    if lines:
        axis.legend(fontsize=7)
    return figure


def certified_figure(attacks: list[dict]) -> Figure:
    """Center smoothing: the certified PSNR floor of the smoothed reconstruction against the input radius,
    beside the empirical attacked figure (the attacked smoothed reconstruction vs the clean one)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axis = figure.subplots()
    for row in attacks:
        if not row.get("certified"):
            continue
        points = [c for c in row["certified"] if c["psnr_floor"] is not None]
        name = label(row, "codec", "quality", "weights")
        (line,) = axis.plot([c["eps"] for c in points], [c["psnr_floor"] for c in points], "o-",
                            label=f"{name}: certified floor")  # fmt: skip
        if row.get("psnr_adv_vs_clean") is not None and row.get("eps") is not None:
            axis.plot([row["eps"]], [row["psnr_adv_vs_clean"]], "x", markersize=10, color=line.get_color(),
                      label=f"{name}: {row['attack']} (empirical)")  # fmt: skip
    axis.set(xlabel="input perturbation, L2 norm", ylabel="smoothed reconstruction PSNR vs clean [dB]",
             title="Certified floor vs empirical attack (center smoothing, real bitstreams)")  # fmt: skip
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return figure


def rate_attack_figure(attacks: list[dict]) -> Figure:
    """Rate attacks (a denial of service): blow-up of the real bpp and of the coding time vs input PSNR."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    lines = defaultdict(list)
    for row in attacks:
        if row.get("psnr_in") is not None:
            lines[label(row, "codec", "quality", "weights", "attack")].append(row)
    for name, rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["psnr_in"])
        left.plot([r["psnr_in"] for r in rows], [r["bpp_ratio"] for r in rows], "o-", label=name)
        right.plot(
            [r["psnr_in"] for r in rows],
            [
                (r["encode_s_adv"] + r["decode_s_adv"]) / (r["encode_s_clean"] + r["decode_s_clean"])
                for r in rows
            ],
            "o-",
            label=name,
        )
    left.set(xlabel="input PSNR [dB]", ylabel="real bpp, adversarial / clean", title="rate blow-up")
    right.set(
        xlabel="input PSNR [dB]", ylabel="encode + decode time, adversarial / clean", title="coding time"
    )
    for axis in (left, right):
        axis.grid(alpha=0.3)
    if lines:
        left.legend(fontsize=7)
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


BD_COLUMNS = ("curve", "anchor", "test", "points", "bd_rate", "bd_psnr")


def _bd(anchor: tuple[list, list], test: tuple[list, list]) -> tuple[float | None, float | None]:
    """BD-rate [%] and BD-PSNR [dB] of `test` against `anchor` (None where the curves do not allow it)."""
    try:
        return bd_rate(*anchor, *test), bd_psnr(*anchor, *test)
    except ValueError:  # fewer than two points, or a curve that does not rise
        return None, None


def bd_rows(attacks: list[dict]) -> list[dict]:
    """Robust rate-distortion across qualities, real bitstreams: per codec, metric, weights and attack, the
    attacked curve against the clean one; and per codec, metric and attack, each checkpoint's curves (clean
    and attacked) against the original weights' (pretrained, or the first weights seen)."""
    curves = defaultdict(list)
    for row in attacks:
        curves[
            (row.get("codec"), row.get("metric"), row.get("attack"), row.get("eps"), row.get("weights"))
        ].append(row)
    rows = []
    for (codec, metric, attack, eps, weights), points in sorted(curves.items(), key=str):
        clean = ([p["bpp_clean"] for p in points], [p["psnr_clean"] for p in points])
        attacked = ([p["bpp_adv"] for p in points], [p["psnr_adv"] for p in points])
        name = f"{codec} {metric} {weights or 'initial'} {attack} eps={eps}"
        rate, psnr = _bd(clean, attacked)
        rows.append({"curve": name, "anchor": "clean", "test": "attacked", "points": len(points),
                     "bd_rate": rate, "bd_psnr": psnr})  # fmt: skip
        for reference in REFERENCES:  # the learned clean curve against the classical coders at its rates
            if all(p.get(f"psnr_{reference}") is not None for p in points):
                anchor = ([p[f"bpp_{reference}"] for p in points], [p[f"psnr_{reference}"] for p in points])
                rate, psnr = _bd(anchor, clean)
                rows.append({"curve": name, "anchor": LABELS[reference], "test": "clean",
                             "points": len(points), "bd_rate": rate, "bd_psnr": psnr})  # fmt: skip
    families = defaultdict(dict)
    for (codec, metric, attack, eps, weights), points in curves.items():
        families[(codec, metric, attack, eps)][weights] = points
    for (codec, metric, attack, eps), by_weights in sorted(families.items(), key=str):
        if len(by_weights) < 2:
            continue
        names = list(by_weights)
        original = "pretrained" if "pretrained" in by_weights else names[0]
        for weights in names:
            if weights == original:
                continue
            for kind, rate_key, psnr_key in (
                ("clean", "bpp_clean", "psnr_clean"),
                ("attacked", "bpp_adv", "psnr_adv"),
            ):
                anchor = (
                    [p[rate_key] for p in by_weights[original]],
                    [p[psnr_key] for p in by_weights[original]],
                )
                test = (
                    [p[rate_key] for p in by_weights[weights]],
                    [p[psnr_key] for p in by_weights[weights]],
                )
                rate, psnr = _bd(anchor, test)
                curve, count = f"{codec} {metric} {attack} eps={eps} ({kind})", len(by_weights[weights])
                rows.append(
                    {"curve": curve, "anchor": original, "test": weights, "points": count, "bd_rate": rate,
                     "bd_psnr": psnr}
                )  # fmt: skip
    return rows


def build_report(paths: list[Path], out: Path, transfer: list[dict] | None = None) -> dict:
    """Write tables (markdown + CSV), PNG plots and report.html to `out`; returns what it found.
    `transfer`: the rows of a transfer matrix (rnic.transfer), shown as a table and heatmaps."""
    attacks, trainings, failed, skipped = collect(paths)
    for reason in skipped:
        print(f"warning: skipped {reason}", file=sys.stderr)
    if not attacks and not trainings:
        raise FileNotFoundError(
            f"no finished run (results.json or final_metrics.json) under {', '.join(map(str, paths))}"
        )
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    method_runs = study.collect_runs(paths)  # experiment=robust_methods: one row per training method
    methods, method_columns, method_notes = study.method_table(method_runs) if method_runs else ([], (), [])
    if methods:
        write_csv(out / "robust_methods.csv", methods, method_columns)
        figures["robust_gain_vs_compute.png"] = png_bytes(study.gain_figure(methods, method_runs), dpi=90)
    defenses = defense_rows(attacks)
    if defenses:
        write_csv(out / "defenses.csv", defenses, DEFENSE_COLUMNS)
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
        sections.append((title, defenses, DEFENSE_COLUMNS))
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
