"""The robust-methods study's table (`experiment=robust_methods`): one row per training method, its
compute, its clean rate-distortion cost against the equal-compute clean control (BD-rate over the
rate points), and under each threat model of `robust_eval` its robustness: VI and attacked PSNR against
the control's, and the attacked RD curve (attacked PSNR against the source vs the attacked image's real
bpp) against the control's attacked curve (BD-rate, BD-PSNR)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib.figure import Figure

from rnic import rd
from rnic.evaluation.card import read_json
from rnic.report.bd import bd_psnr, bd_rate
from rnic.report.paper import readable_ticks

CONTROL = "none"
# (bpp, PSNR) keys of a run's robust_eval figures: the clean curve and the attacked one.
CLEAN = ("bpp_clean", "psnr_clean")
ATTACKED = ("bpp_adv", "psnr_adv")


def collect_runs(paths: list[Path]) -> list[dict]:
    """Every training run under `paths` that was evaluated by `robust_eval` (final_metrics.json)."""
    runs = []
    for root in paths:
        for final in sorted(Path(root).rglob("final_metrics.json")):
            data = read_json(final) or {}  # report.collect names the unreadable ones
            if data.get("robust_eval") and data.get("method"):
                lmbda = data.get("lmbda")
                if lmbda is None and (final.parent / "config.yaml").is_file():  # runs that predate "lmbda"
                    from omegaconf import OmegaConf

                    lmbda = OmegaConf.load(final.parent / "config.yaml").model.get("lmbda")
                runs.append({"run": str(final.parent), **data, "lmbda": lmbda})
    return runs


def under(runs: list[dict], threat: str) -> list[dict]:
    """The figures under `threat` of the runs evaluated under it (in their order)."""
    return [r["robust_eval"][threat] for r in runs if threat in r["robust_eval"]]


def image_figures(run: dict, threat: str, key: str = "psnr_adv") -> dict[str, float]:
    """Per image: a run's `key` under `threat` (robust_eval/<threat>/results.json), where it is defined."""
    results = read_json(Path(run["run"]) / "robust_eval" / threat / "results.json") or {}
    return {r["image"]: r[key] for r in results.get("images", []) if r.get(key) is not None}


def image_gains(group: list[dict], control: list[dict], threat: str) -> list[float]:
    """Per image: the attacked PSNR gain over the control run of the same lambda, averaged over the
    rate points (the spread of a mean over a few images is that of these)."""
    control_at = {run.get("lmbda"): run for run in control}
    gains: dict[str, list[float]] = defaultdict(list)
    for run in group:
        if run.get("lmbda") not in control_at:
            continue
        ours, theirs = image_figures(run, threat), image_figures(control_at[run.get("lmbda")], threat)
        for image in ours.keys() & theirs.keys():
            gains[image].append(ours[image] - theirs[image])
    return [sum(values) / len(values) for _, values in sorted(gains.items())]


def clean_figures(run: dict) -> dict:
    """A run's clean figures: the same under every threat, taken from the first it was evaluated under."""
    return run["robust_eval"][sorted(run["robust_eval"])[0]]


def _bd(
    function, anchor: list[dict], test: list[dict], threat: str, curve: tuple[str, str] = CLEAN
) -> tuple[float | None, str | None]:
    rate, quality = curve
    anchor, test = under(anchor, threat), under(test, threat)
    try:
        value = function(
            [f[rate] for f in anchor],
            [f[quality] for f in anchor],
            [f[rate] for f in test],
            [f[quality] for f in test],
        )
    except (ValueError, KeyError, TypeError) as err:
        return None, str(err)
    return (value if value == value else None), (None if value == value else "the curves do not overlap")


def in_order(methods) -> list[str]:
    """The control first, then the other methods by name."""
    return sorted(methods, key=lambda m: (m != CONTROL, m))


def method_table(runs: list[dict]) -> tuple[list[dict], tuple[str, ...], list[str]]:
    """(rows, columns, notes): per method, means over its rate points; gains against `none`, with the
    median and bootstrap 95% interval over the images of the per-image gain."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_method[run["method"]].append(run)
    threats = sorted({t for run in runs for t in run["robust_eval"]})
    first = threats[0]  # clean figures are the same under every threat: taken from the first
    control = sorted(by_method.get(CONTROL, []), key=lambda r: r.get("lmbda") or 0)
    notes, rows = [], []
    for method in in_order(by_method):
        group = sorted(by_method[method], key=lambda r: r.get("lmbda") or 0)
        row = {
            "method": method,
            "runs": len(group),
            "passes": rd.mean_or_none(r["passes"] for r in group),
            "wall_s": rd.mean_or_none(r.get("train_seconds") for r in group),
            "clean_psnr": rd.mean_or_none(clean_figures(r)["psnr_clean"] for r in group),
            "clean_bpp": rd.mean_or_none(clean_figures(r)["bpp_clean"] for r in group),
        }
        if control:
            row["bd_rate_pct"], why = _bd(bd_rate, control, group, first)
            row["bd_psnr_db"], _ = _bd(bd_psnr, control, group, first)
            if why:
                notes.append(f"{method}: no BD-rate ({why})")
        for threat in threats:
            row[f"psnr_adv_{threat}"] = rd.mean_or_none(f["psnr_adv"] for f in under(group, threat))
            row[f"vi_{threat}"] = rd.mean_or_none(f["vi"] for f in under(group, threat))
            if control:  # the attacked RD curve against the control's
                row[f"bd_rate_adv_{threat}_pct"], _ = _bd(bd_rate, control, group, threat, ATTACKED)
                row[f"bd_psnr_adv_{threat}_db"], _ = _bd(bd_psnr, control, group, threat, ATTACKED)
        collapses = [r["fast_collapse_step"] for r in group if r.get("fast_collapse_step") is not None]
        row["collapse"] = f"fast collapsed at step(s) {collapses}" if collapses else ""
        rows.append(row)
    control_row = next((r for r in rows if r["method"] == CONTROL), None)
    for row in rows:
        for threat in threats:
            if control_row is None:
                continue
            vi, vi0 = row[f"vi_{threat}"], control_row[f"vi_{threat}"]
            adv, adv0 = row[f"psnr_adv_{threat}"], control_row[f"psnr_adv_{threat}"]
            row[f"vi_{threat}_gain"] = None if vi is None or vi0 is None else vi0 - vi
            row[f"psnr_adv_{threat}_gain"] = None if adv is None or adv0 is None else adv - adv0
            spread = rd.spread(image_gains(by_method[row["method"]], control, threat))
            row[f"psnr_adv_{threat}_gain_median"] = spread and spread["median"]
            row[f"psnr_adv_{threat}_gain_ci95"] = spread and "{:+.2f} to {:+.2f}".format(*spread["ci95"])
    columns = ("method", "runs", "passes", "wall_s", "clean_psnr", "clean_bpp", "bd_rate_pct", "bd_psnr_db")
    for threat in threats:
        columns += (f"psnr_adv_{threat}", f"vi_{threat}", f"vi_{threat}_gain", f"psnr_adv_{threat}_gain",
                    f"psnr_adv_{threat}_gain_median", f"psnr_adv_{threat}_gain_ci95",
                    f"bd_rate_adv_{threat}_pct", f"bd_psnr_adv_{threat}_db")  # fmt: skip
    return rows, (*columns, "collapse"), notes


def gain_figure(rows: list[dict], runs: list[dict]) -> Figure:
    """Left: robust gain (VI reduction against the control, dB) against compute (codec passes). Then, per
    threat: the attacked RD curve of each method (attacked PSNR against the source vs real bpp, over its
    rate points), the control's clean curve, and JPEG at the control's rates on the same images."""
    threats = sorted({t for run in runs for t in run["robust_eval"]})
    figure = Figure(figsize=(6.5 + 4.5 * len(threats), 4.5), layout="constrained")
    axes = figure.subplots(1, 1 + len(threats), squeeze=False)[0]
    axis = axes[0]
    for marker, threat in zip("os^vD", threats, strict=False):
        points = [(r["passes"], r.get(f"vi_{threat}_gain"), r["method"]) for r in rows]
        points = [p for p in points if p[1] is not None]
        axis.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=f"{threat} threat")
        for x, y, name in points:
            axis.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axis.axhline(0, color="gray", lw=0.8)
    readable_ticks(axis.xaxis, [r["passes"] for r in rows if r.get("passes") is not None], integer=True)
    axis.set(xlabel="codec passes per run (forward + backward, in batches)",
             ylabel="VI reduction vs clean control [dB]", title="Robust gain vs compute")  # fmt: skip
    axis.grid(alpha=0.3)
    if threats:
        axis.legend(fontsize=7)
    by_method: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_method[run["method"]].append(run)
    for axis, threat in zip(axes[1:], threats, strict=True):
        for method in in_order(by_method):
            group = sorted(by_method[method], key=lambda r: r.get("lmbda") or 0)
            figures = under(group, threat)
            axis.plot([f["bpp_adv"] for f in figures], [f["psnr_adv"] for f in figures], marker="o",
                      lw=2 if method == CONTROL else 1, label=f"{method}, attacked")  # fmt: skip
        control = under(sorted(by_method.get(CONTROL, []), key=lambda r: r["lmbda"] or 0), threat)
        if control:
            axis.plot([f["bpp_clean"] for f in control], [f["psnr_clean"] for f in control], "k--x",
                      label=f"{CONTROL}, clean")  # fmt: skip
            jpeg = [f for f in control if f.get("psnr_jpeg") is not None]
            axis.plot([f["bpp_jpeg"] for f in jpeg], [f["psnr_jpeg"] for f in jpeg], "s:", color="gray",
                      label="JPEG, clean (same images, matched rate)")  # fmt: skip
        axis.set(xlabel="bits per pixel (real bitstream)", ylabel="PSNR against the source [dB]",
                 title=f"Attacked rate-distortion, {threat} threat")  # fmt: skip
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return figure
