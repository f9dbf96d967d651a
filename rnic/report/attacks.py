"""report.py's attack section: one row per attack.py run and budget (its card's means), and the figures
across runs: robustness curves, rate-distortion clean vs attacked, center smoothing's certificate, and
rate attacks."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from rnic.card import read_json
from rnic.classical import LABELS, REFERENCES
from rnic.report.runs import defense_of, describe, label, read_card, run_config

ATTACK_COLUMNS = (
    "run", "codec", "quality", "metric", "weights", "attack", "eps", "defense", "adaptive", "images",
    "psnr_in", "linf",
    "psnr_clean", "psnr_adv", "bpp_clean", "bpp_adv", "bpp_ratio", "msssim_clean", "msssim_adv", "vi",
    "psnr_jpeg", "bpp_jpeg", "psnr_webp", "bpp_webp",
    "vi_msssim", "encode_s_clean", "encode_s_adv", "decode_s_clean", "decode_s_adv",
)  # fmt: skip


def attack_rows(root: Path, skipped: list[str]) -> list[dict]:
    """A row per finished attack.py run (and budget folder) under `root`; the others are named in
    `skipped` with the reason."""
    attacks = []
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
        defense = {  # defense=none runs have none; attack.adaptive matters only behind a defense
            "defense": "+".join(data.get("defense") or ["none"]),
            "adaptive": data.get("adaptive", True),
            "weights_path": str(Path(weights).resolve()) if weights else None,
        }
        card = read_card(folder)  # what the run says it evaluated; results.json for older runs
        means = card["means"] if card else data["mean"]
        row = {"run": str(folder), **describe(config), "eps": eps, **defense, **means}
        attacks.append({**row, "certified": data["certified"]} if data.get("certified") else row)
    return attacks


def robustness_figure(attacks: list[dict]) -> Figure:
    """Reconstruction PSNR and VI against input PSNR, one line per codec and operating point."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    lines = defaultdict(list)
    for row in attacks:
        if row.get("psnr_in") is not None:
            lines[label(row, "codec", "quality", "metric", "weights", "defense", "attack")].append(row)
    for name, rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["psnr_in"])
        left.plot([r["psnr_in"] for r in rows], [r["psnr_adv"] for r in rows], "o-", label=name)
        right.plot([r["psnr_in"] for r in rows], [r["vi"] for r in rows], "o-", label=name)
    left.set(xlabel="input PSNR [dB]", ylabel="attacked reconstruction PSNR [dB]", title="robustness curves")
    right.set(xlabel="input PSNR [dB]", ylabel="VI [dB]", title="vulnerability index")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    legend_below(figure)
    return figure


def legend_below(figure: Figure) -> None:
    """The legend of the figure's first axes under the axes, the figure grown by its rows (many lines, e.g.
    one per defence, would otherwise squeeze the axes away)."""
    handles, labels = figure.axes[0].get_legend_handles_labels()
    if not handles:
        return
    width, height = figure.get_size_inches()
    # About 0.06 in per character at 7 pt, plus the marker: as many columns as the longest label allows,
    # and the figure widened where even one does not fit.
    column = 0.06 * max(len(text) for text in labels) + 0.6
    columns = max(1, min(3, int(width // column)))
    figure.set_size_inches(max(width, column), height + 0.16 * -(-len(handles) // columns))
    figure.legend(handles, labels, loc="outside lower center", fontsize=7, ncols=columns)


def rate_distortion_figure(attacks: list[dict]) -> Figure:
    """Real bpp against PSNR across qualities, clean and attacked, per codec, defence, attack and budget;
    JPEG and WebP at the undefended lines' rates. A defence's non-adaptive runs are left out: their
    attacked figures are not those of the defended pipeline (the defences section shows them)."""
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axis = figure.subplots()
    lines = defaultdict(list)
    for row in attacks:
        if defense_of(row) is None or row.get("adaptive", True):
            lines[label(row, "codec", "metric", "weights", "defense", "attack", "eps")].append(row)
    for name, rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["bpp_clean"])
        (clean,) = axis.plot(
            [r["bpp_clean"] for r in rows], [r["psnr_clean"] for r in rows], "s--", label=f"{name} clean"
        )
        axis.plot([r["bpp_adv"] for r in rows], [r["psnr_adv"] for r in rows], "o-", color=clean.get_color(),
                  label=f"{name} attacked")  # fmt: skip
        for reference, style in zip(REFERENCES, (":", "-."), strict=True):  # at the learned clean rates
            if defense_of(rows[0]) is None and all(r.get(f"psnr_{reference}") is not None for r in rows):
                axis.plot([r[f"bpp_{reference}"] for r in rows], [r[f"psnr_{reference}"] for r in rows],
                          style, marker=".", color=clean.get_color(), alpha=0.7,
                          label=f"{LABELS[reference]} at {name}'s rates")  # fmt: skip
    axis.set(xlabel="bpp (real bitstreams)", ylabel="PSNR [dB]", title="rate-distortion, clean vs attacked")
    axis.grid(alpha=0.3)
    legend_below(figure)
    return figure


def certified_figure(attacks: list[dict]) -> Figure:
    """Center smoothing: the certified PSNR floor of the smoothed reconstruction against the input radius,
    each point with its abstention rate, beside the empirical attacked figure (the attacked smoothed
    reconstruction vs the clean one)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axis = figure.subplots()
    for row in attacks:
        if not row.get("certified"):
            continue
        points = [c for c in row["certified"] if c["psnr_floor"] is not None]
        name = label(row, "codec", "quality", "weights")
        (line,) = axis.plot([c["eps"] for c in points], [c["psnr_floor"] for c in points], "o-",
                            label=f"{name}: certified floor")  # fmt: skip
        for c in points:  # the floor holds for the certified images only: their share beside it
            axis.annotate(f"{c.get('abstention_rate', 0):.0%} abstained", (c["eps"], c["psnr_floor"]),
                          textcoords="offset points", xytext=(4, -10), fontsize=7)  # fmt: skip
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
            lines[label(row, "codec", "quality", "weights", "defense", "attack")].append(row)
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
    legend_below(figure)
    return figure
