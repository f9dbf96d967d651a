"""report.py's defense comparison: per defense, its clean cost and the robust gain that survives an adaptive
attack, next to the defense-oblivious (non-adaptive) figure; finetuned checkpoints on the same chart."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf

DEFENSE_TABLE_COLUMNS = (
    "codec", "weights", "attack", "eps", "defense", "images", "psnr_cost", "bpp_cost", "psnr_adv_undefended",
    "psnr_adv_nonadaptive", "vi_nonadaptive", "psnr_adv_adaptive", "vi_adaptive", "gain_nonadaptive",
    "gain_adaptive",
)  # fmt: skip
# Attack rows compared with each other: same codec, operating point, attack and budget.
GROUP = ("codec", "quality", "metric", "attack", "eps")


def _diff(a, b):
    return None if a is None or b is None else a - b


def start_weights(weights_path: str | None) -> str | None:
    """The weights a finetuned rnic checkpoint started from, read from its run's config.yaml."""
    if not weights_path:
        return None
    config = Path(weights_path).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return None
    start = (OmegaConf.to_container(OmegaConf.load(config)).get("model") or {}).get("weights")
    return str(Path(start).resolve()) if start else None


def defense_rows(attacks: list[dict]) -> list[dict]:
    """One row per defense (per codec, weights, attack and budget) and one per finetuned checkpoint
    whose starting weights were attacked alike: clean PSNR / bpp cost against no defense (or the start),
    attacked PSNR and VI non-adaptive and adaptive, and the attacked-PSNR gain over no defense."""
    groups = defaultdict(list)
    for row in attacks:
        groups[tuple(row.get(k) for k in GROUP)].append(row)
    table = []
    for rows in groups.values():
        by_weights = defaultdict(list)
        for row in rows:
            by_weights[row.get("weights_path")].append(row)
        for weights, own in by_weights.items():
            plain = next((r for r in own if r.get("defense", "none") == "none"), None)
            defended = defaultdict(dict)
            for row in own:
                if row.get("defense", "none") != "none":
                    defended[row["defense"]]["adaptive" if row.get("adaptive", True) else "nonadaptive"] = row
            for name, modes in sorted(defended.items()):
                first = modes.get("adaptive") or modes["nonadaptive"]
                undefended = plain["psnr_adv"] if plain else None
                if (
                    undefended is None and "nonadaptive" in modes
                ):  # the same attack, coded without the defense
                    undefended = modes["nonadaptive"].get("psnr_adv_undefended")
                entry = {k: first.get(k) for k in ("codec", "weights", "attack", "eps", "images")}
                entry.update(
                    defense=name,
                    psnr_cost=first.get("psnr_cost"),
                    bpp_cost=first.get("bpp_cost"),
                    psnr_adv_undefended=undefended,
                )
                for mode in ("nonadaptive", "adaptive"):
                    row = modes.get(mode) or {}
                    entry[f"psnr_adv_{mode}"] = row.get("psnr_adv")
                    entry[f"vi_{mode}"] = row.get("vi")
                    entry[f"gain_{mode}"] = _diff(row.get("psnr_adv"), undefended)
                table.append(entry)
            # A finetuned checkpoint against the weights it started from: adversarial finetuning as a defense.
            start = start_weights(weights)
            base = next(
                (r for r in by_weights.get(start, []) if r.get("defense", "none") == "none"), None
            ) if start else None  # fmt: skip
            if plain and base:
                table.append(
                    {
                        **{k: plain.get(k) for k in ("codec", "weights", "attack", "eps", "images")},
                        "defense": f"finetuned ({plain.get('weights')})",
                        "psnr_cost": _diff(base["psnr_clean"], plain["psnr_clean"]),
                        "bpp_cost": _diff(plain["bpp_clean"], base["bpp_clean"]),
                        "psnr_adv_undefended": base["psnr_adv"],
                        "psnr_adv_adaptive": plain["psnr_adv"],
                        "vi_adaptive": plain["vi"],
                        "gain_adaptive": _diff(plain["psnr_adv"], base["psnr_adv"]),
                    }
                )
    return table


def cost_gain_figure(rows: list[dict]) -> Figure:
    """Clean PSNR cost against the attacked-PSNR gain that survives the adaptive attack, one point each."""
    figure = Figure(figsize=(7, 4.8), layout="constrained")
    axis = figure.subplots()
    for row in rows:
        if row.get("psnr_cost") is None or row.get("gain_adaptive") is None:
            continue
        finetuned = row["defense"].startswith("finetuned")
        axis.scatter(
            row["psnr_cost"],
            row["gain_adaptive"],
            marker="*" if finetuned else "o",
            s=80 if finetuned else 40,
        )
        axis.annotate(row["defense"], (row["psnr_cost"], row["gain_adaptive"]), fontsize=7, xytext=(4, 3),
                      textcoords="offset points")  # fmt: skip
        if row.get("gain_nonadaptive") is not None:  # how much of the naive gain was never real
            axis.plot(
                [row["psnr_cost"]] * 2, [row["gain_adaptive"], row["gain_nonadaptive"]], ":", color="grey"
            )
            axis.scatter(row["psnr_cost"], row["gain_nonadaptive"], marker="x", color="grey", s=25)
    axis.axhline(0, color="black", lw=0.6)
    axis.axvline(0, color="black", lw=0.6)
    axis.set(
        xlabel="clean PSNR cost [dB] (vs no defence / the starting weights)",
        ylabel="attacked PSNR gain [dB]",
        title="defences: clean cost vs robust gain (o adaptive, x non-adaptive, * finetuned)",
    )
    axis.grid(alpha=0.3)
    return figure
