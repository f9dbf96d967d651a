"""Bjontegaard deltas between two rate-distortion curves, from the `bjontegaard` package (one wrapper
for every rnic table that compares codecs).

`bd_rate`: the average rate difference of `test` against `anchor` at equal quality, in percent
(negative: `test` needs fewer bits). `bd_psnr`: the average quality difference at equal rate, in dB.
The default interpolation is the package's piecewise-cubic (`pchip`) one; `akima` and `cubic` (the
original Bjontegaard polynomial fit) are also available.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import bjontegaard

METHODS = ("pchip", "akima", "cubic")


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
    if method not in METHODS:
        raise ValueError(f"BD method={method!r} is unknown; choose one of: {', '.join(METHODS)}")


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
    """BD-PSNR of `test` against `anchor` in dB (positive: `test` is better at equal rate)."""
    return _delta(bjontegaard.bd_psnr, anchor_rate, anchor_quality, test_rate, test_quality, method)
