"""Bjontegaard deltas between two rate-distortion curves, from the `bjontegaard` package (one wrapper
for every rnic table that compares codecs).

`bd_rate`: the average rate difference of `test` against `anchor` at equal quality, in percent
(negative: `test` needs fewer bits). `bd_psnr`: the average quality difference at equal rate, in dB.
The default interpolation is the package's piecewise-cubic (`pchip`) one; `akima` and `cubic` (the
original Bjontegaard polynomial fit) are also available.

`bd_rows`: report.py's BD section, the attacked curves against the clean ones and finetuned checkpoints'
curves against their original weights', across qualities.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence

import bjontegaard

from rnic.classical import LABELS, REFERENCES
from rnic.report.runs import defense_of

INTERPOLATIONS = ("pchip", "akima", "cubic")  # the package's `method`s
# report.py's BD table: each curve against its anchor.
BD_COLUMNS = ("image_set", "curve", "anchor", "test", "points", "bd_rate", "bd_psnr")


def _curve(rate: Sequence[float], quality: Sequence[float], name: str) -> tuple[list[float], list[float]]:
    points = sorted(zip((float(r) for r in rate), (float(q) for q in quality), strict=True))
    if len(points) < 2:
        raise ValueError(f"BD: the {name} curve has {len(points)} point(s); it needs at least 2")
    if any(not (math.isfinite(r) and math.isfinite(q) and r > 0) for r, q in points):
        raise ValueError(f"BD: the {name} curve has a rate <= 0 or a value that is not finite: {points}")
    if any(b[1] <= a[1] or b[0] <= a[0] for a, b in zip(points, points[1:], strict=False)):
        raise ValueError(
            f"BD: the {name} curve is not monotone (quality must rise strictly with rate): {points}"
        )
    return [r for r, _ in points], [q for _, q in points]


def _check_method(method: str) -> None:
    if method not in INTERPOLATIONS:
        raise ValueError(f"BD method={method!r} is unknown; choose one of: {', '.join(INTERPOLATIONS)}")


def _delta(delta, anchor_rate, anchor_quality, test_rate, test_quality, method: str) -> float:
    """`delta` (the package's bd_rate or bd_psnr) of two checked curves."""
    _check_method(method)
    ar, aq = _curve(anchor_rate, anchor_quality, "anchor")
    tr, tq = _curve(test_rate, test_quality, "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package warns on small overlaps; the caller sees the number
        return float(delta(ar, aq, tr, tq, method=method, require_matching_points=False))


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_quality: Sequence[float],
    test_rate: Sequence[float],
    test_quality: Sequence[float],
    method: str = "pchip",
) -> float:
    """BD-rate of `test` against `anchor` in percent (quality in dB, e.g. PSNR; rate e.g. bpp).

    NaN where the curves do not overlap in quality (no common range to integrate over)."""
    return _delta(bjontegaard.bd_rate, anchor_rate, anchor_quality, test_rate, test_quality, method)


def bd_psnr(
    anchor_rate: Sequence[float],
    anchor_quality: Sequence[float],
    test_rate: Sequence[float],
    test_quality: Sequence[float],
    method: str = "pchip",
) -> float:
    """BD-PSNR of `test` against `anchor` in dB (positive: `test` is better at equal rate).

    NaN where the curves do not overlap in rate."""
    return _delta(bjontegaard.bd_psnr, anchor_rate, anchor_quality, test_rate, test_quality, method)


def bd_or_none(anchor: tuple[list, list], test: tuple[list, list]) -> tuple[float | None, float | None]:
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
    for row in attacks:  # a defence's runs make their own curves
        attack = " ".join(filter(None, (defense_of(row), row.get("attack"))))
        key = (
            row.get("image_set"),
            row.get("codec"),
            row.get("metric"),
            attack,
            row.get("eps"),
            row.get("weights"),
        )
        curves[key].append(row)  # one image set per curve: never pooled
    rows = []
    for (images, codec, metric, attack, eps, weights), points in sorted(curves.items(), key=str):
        clean = ([p["bpp_clean"] for p in points], [p["psnr_clean"] for p in points])
        attacked = ([p["bpp_adv"] for p in points], [p["psnr_adv"] for p in points])
        name = f"{codec} {metric} {weights or 'initial'} {attack} eps={eps}"
        rate, psnr = bd_or_none(clean, attacked)
        rows.append({"image_set": images, "curve": name, "anchor": "clean", "test": "attacked",
                     "points": len(points), "bd_rate": rate, "bd_psnr": psnr})  # fmt: skip
        for reference in REFERENCES:  # the learned clean curve against the classical coders at its rates
            if all(p.get(f"psnr_{reference}") is not None for p in points):
                anchor = ([p[f"bpp_{reference}"] for p in points], [p[f"psnr_{reference}"] for p in points])
                rate, psnr = bd_or_none(anchor, clean)
                rows.append({"image_set": images, "curve": name, "anchor": LABELS[reference], "test": "clean",
                             "points": len(points), "bd_rate": rate, "bd_psnr": psnr})  # fmt: skip
    families = defaultdict(dict)
    for (images, codec, metric, attack, eps, weights), points in curves.items():
        families[(images, codec, metric, attack, eps)][weights] = points
    for (images, codec, metric, attack, eps), by_weights in sorted(families.items(), key=str):
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
                rate, psnr = bd_or_none(anchor, test)
                curve, count = f"{codec} {metric} {attack} eps={eps} ({kind})", len(by_weights[weights])
                rows.append(
                    {"image_set": images, "curve": curve, "anchor": original, "test": weights,
                     "points": count, "bd_rate": rate, "bd_psnr": psnr}
                )  # fmt: skip
    return rows
