"""report.py's attack section: one row per attack.py run and budget (its card's means), and the figures
across runs: robustness curves, rate-distortion clean vs attacked, center smoothing's certificate, and
rate attacks."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rnic.classical import LABELS, REFERENCES
from rnic.evaluation.card import read_json
from rnic.image_sets import image_set, set_label
from rnic.report.runs import defense_of, describe, label, read_card, run_config

ATTACK_COLUMNS = (
    "image_set", "run", "seed", "codec", "quality", "metric", "weights", "attack", "eps", "defense",
    "adaptive", "images",
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
        defense = {  # defense=none runs have none; attack_run.adaptive matters only behind a defense
            "defense": "+".join(data.get("defense") or ["none"]),
            "adaptive": data.get("adaptive", True),
            "weights_path": str(Path(weights).resolve()) if weights else None,
        }
        card = read_card(folder)  # what the run says it evaluated; results.json for older runs
        means = card["means"] if card else data["mean"]
        images = data.get("image_set") or image_set(  # runs written before image sets were recorded
            config.get("data"), config.get("split", "val"), [r["image"] for r in data.get("images") or []]
        )
        row = {"run": str(folder), "image_set": set_label(images), "seed": config.get("seed"),
               **describe(config), "eps": eps, **defense, **means}  # fmt: skip
        certificates = {key: data[key] for key in ("certified", "certified_rate") if data.get(key)}
        attacks.append({**row, **certificates})
    return attacks


def by_image_set(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows per image set (never pooled in one axes), in the order of first appearance."""
    sets: dict[str, list[dict]] = {}
    for row in rows:
        sets.setdefault(row.get("image_set") or "images unrecorded", []).append(row)
    return sets


def robustness_figure(attacks: list[dict]) -> Figure:
    """Reconstruction PSNR and VI against input PSNR, one line per codec and operating point; one row of
    panels per image set."""
    sets = by_image_set([row for row in attacks if row.get("psnr_in") is not None])
    figure = Figure(figsize=(11, 0.4 + 3.8 * max(1, len(sets))), layout="constrained")
    grid = figure.subplots(max(1, len(sets)), 2, squeeze=False)
    colors = line_colors(label(r, *CURVE_KEYS) for rows in sets.values() for r in rows)
    for (images, rows), (left, right) in zip(sets.items(), grid, strict=False):
        lines = defaultdict(list)
        for row in rows:
            lines[label(row, *CURVE_KEYS)].append(row)
        for name, line in sorted(lines.items()):
            line.sort(key=lambda r: r["psnr_in"])
            x = [r["psnr_in"] for r in line]
            left.plot(x, [r["psnr_adv"] for r in line], "o-", color=colors[name], label=name)
            right.plot(x, [r["vi"] for r in line], "o-", color=colors[name])
        left.set(xlabel="input PSNR [dB]", ylabel="attacked reconstruction PSNR [dB]",
                 title=f"robustness curves, {images}")  # fmt: skip
        right.set(xlabel="input PSNR [dB]", ylabel="VI [dB]", title=f"vulnerability index, {images}")
        for axis in (left, right):
            axis.grid(alpha=0.3)
    legend_below(figure, unique_handles(figure))
    return figure


CURVE_KEYS = ("codec", "quality", "metric", "weights", "defense", "attack")


def line_colors(names) -> dict[str, str]:
    """One colour per line name, the same in every panel."""
    ordered = sorted(set(names))
    return {name: f"C{i % 10}" for i, name in enumerate(ordered)}


def unique_handles(figure: Figure) -> tuple[list, list[str]]:
    """Each label once over all the figure's axes (a line drawn in several panels is one legend entry)."""
    seen: dict[str, object] = {}
    for axis in figure.axes:
        for handle, text in zip(*axis.get_legend_handles_labels(), strict=True):
            seen.setdefault(text, handle)
    return list(seen.values()), list(seen)


def legend_below(figure: Figure, entries: tuple[list, list[str]] | None = None) -> None:
    """The legend (`entries`, else the first axes') under the axes, the figure grown by its rows (many
    lines, e.g. one per defence, would otherwise squeeze the axes away)."""
    handles, labels = entries if entries is not None else figure.axes[0].get_legend_handles_labels()
    if not handles:
        return
    width, height = figure.get_size_inches()
    # About 0.06 in per character at 7 pt, plus the marker: as many columns as the longest label allows,
    # and the figure widened where even one does not fit.
    column = 0.06 * max(len(text) for text in labels) + 0.6
    columns = max(1, min(3, int(width // column)))
    figure.set_size_inches(max(width, column), height + 0.16 * -(-len(handles) // columns))
    figure.legend(handles, labels, loc="outside lower center", fontsize=7, ncols=columns)


# How the rate-distortion figure draws each kind of curve; colours tell the codecs and methods apart.
RD_STYLES = {
    "clean": {"marker": "s", "linestyle": "--"},
    "attacked": {"marker": "o", "linestyle": "-"},
    "jpeg": {"marker": ".", "linestyle": ":"},
    "webp": {"marker": ".", "linestyle": "-."},
}
RD_KEYS = ("codec", "metric", "weights", "defense", "attack", "eps")


def rate_distortion_figure(attacks: list[dict]) -> Figure:
    """Real bpp against PSNR across qualities, clean and attacked, per codec, defence, attack and budget;
    JPEG and WebP at the undefended lines' rates; one panel per image set. The legend names each line once
    by colour and each kind of curve once by style. A defence's non-adaptive runs are left out: their
    attacked figures are not those of the defended pipeline (the defences section shows them)."""
    rows = [r for r in attacks if defense_of(r) is None or r.get("adaptive", True)]
    sets = by_image_set(rows)
    figure = Figure(figsize=(0.5 + 6 * max(1, len(sets)), 4.5), layout="constrained")
    axes = figure.subplots(1, max(1, len(sets)), squeeze=False)[0]
    colors = line_colors(label(r, *RD_KEYS) for r in rows)
    for (images, group), axis in zip(sets.items(), axes, strict=False):
        lines = defaultdict(list)
        for row in group:
            lines[label(row, *RD_KEYS)].append(row)
        for name, line in sorted(lines.items()):
            line.sort(key=lambda r: r["bpp_clean"])
            color = colors[name]
            axis.plot([r["bpp_clean"] for r in line], [r["psnr_clean"] for r in line], **RD_STYLES["clean"],
                      color=color, label=name)  # fmt: skip
            axis.plot([r["bpp_adv"] for r in line], [r["psnr_adv"] for r in line], **RD_STYLES["attacked"],
                      color=color)  # fmt: skip
            for reference in REFERENCES:  # at the learned clean rates
                if defense_of(line[0]) is None and all(r.get(f"psnr_{reference}") is not None for r in line):
                    axis.plot([r[f"bpp_{reference}"] for r in line], [r[f"psnr_{reference}"] for r in line],
                              **RD_STYLES[reference], color=color, alpha=0.7)  # fmt: skip
        axis.set(xlabel="bpp (real bitstreams)", ylabel="PSNR [dB]", title=f"clean vs attacked, {images}")
        axis.grid(alpha=0.3)
    handles, labels = unique_handles(figure)
    kinds = {
        "clean": "clean",
        "attacked": "attacked",
        **{r: f"{LABELS[r]} at the clean rate" for r in REFERENCES},
    }
    for kind, text in kinds.items():
        handles.append(Line2D([], [], color="black", **RD_STYLES[kind]))
        labels.append(text)
    legend_below(figure, (handles, labels))
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


def certified_rate_figure(attacks: list[dict]) -> Figure:
    """The noise encoder's certified rate (certify.rate=true): the bound on the rate's percentile within
    each input radius, beside the percentile at the clean image and at the attacked one (empirical)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axis = figure.subplots()
    for row in attacks:
        points = [c for c in row.get("certified_rate") or [] if c["bpp_bound"] is not None]
        if not points:
            continue
        name = label(row, "codec", "quality", "weights")
        (line,) = axis.plot([c["eps"] for c in points], [c["bpp_bound"] for c in points], "o-",
                            label=f"{name}: certified bound")  # fmt: skip
        for c in points:  # the bound holds for the images that got one: the abstentions beside it
            axis.annotate(f"{c['abstained']}/{c['images']} abstained", (c["eps"], c["bpp_bound"]),
                          textcoords="offset points", xytext=(4, -10), fontsize=7)  # fmt: skip
        axis.axhline(points[0]["bpp_clean"], color=line.get_color(), linestyle=":",
                     label=f"{name}: clean (q = {points[0]['quantile']:g})")  # fmt: skip
        if points[0].get("bpp_attacked") is not None and row.get("eps") is not None:
            axis.plot([row["eps"]], [points[0]["bpp_attacked"]], "x", markersize=10, color=line.get_color(),
                      label=f"{name}: {row['attack']} (empirical)")  # fmt: skip
    axis.set(xlabel="input perturbation, L2 norm", ylabel="rate percentile over the encoder's noise [bpp]",
             title="Certified rate (noise encoder, real bitstreams)")  # fmt: skip
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
