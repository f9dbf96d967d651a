"""What a paper takes from report.py: LaTeX (booktabs) tables beside the CSVs, figures as PDF beside PNG,
readable axis ticks, and mean +- standard deviation over runs that differ only in their seed."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from rnic.io import atomic_write, png_bytes

PNG_DPI = 150
# LaTeX's special characters in text cells.
TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def tex_escape(text: str) -> str:
    return "".join(TEX_ESCAPES.get(char, char) for char in text)


def tex_table(rows: list[dict], columns: tuple[str, ...], headers: dict[str, str], shown: Callable) -> str:
    """A booktabs table (\\toprule, \\midrule, \\bottomrule) of the columns that hold a figure in some row;
    figures right-aligned, text left-aligned, cells as the HTML page shows them."""
    columns = tuple(c for c in columns if any(row.get(c) not in (None, "") for row in rows))
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in columns]
    spec = "".join("r" if n else "l" for n in numeric)
    head = " & ".join(tex_escape(headers.get(c, c)) for c in columns)
    body = [" & ".join(tex_escape(shown(row.get(c))) for c in columns) + r" \\" for row in rows]
    return "\n".join(
        [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head + r" \\", r"\midrule", *body, r"\bottomrule",
         r"\end{tabular}", ""]
    )  # fmt: skip


def write_tex(path: Path, rows: list[dict], columns, headers: dict[str, str], shown: Callable) -> None:
    text = tex_table(rows, tuple(columns), headers, shown)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_figure(out: Path, name: str, figure: Figure) -> bytes:
    """`<name>.png` at PNG_DPI and `<name>.pdf` (vector) in `out`; returns the PNG (for the HTML page)."""
    data = png_bytes(figure, dpi=PNG_DPI)
    atomic_write(out / f"{name}.png", lambda tmp: tmp.write_bytes(data))
    atomic_write(out / f"{name}.pdf", lambda tmp: figure.savefig(tmp, format="pdf"))
    return data


def readable_ticks(axis: Axis, values: list[float], integer: bool = False) -> None:
    """At most five major ticks, as plain numbers (no offset such as '+4e2'); around a single value (every
    run at the same compute) a range of +-25 %, not a sliver whose crowded labels overlap."""
    axis.set_major_locator(MaxNLocator(nbins=4, integer=integer, min_n_ticks=2))
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)
    if values and max(values) == min(values):
        center = float(values[0])
        span = max(abs(center) * 0.25, 1.0)
        limits = axis.axes.set_xlim if axis.axis_name == "x" else axis.axes.set_ylim
        limits(center - span, center + span)


# Run settings that never make two runs different experiments: where they ran and what they were called.
NOT_SETTINGS = ("paths", "hydra", "run", "created", "command")


def without_seeds(tree):
    """A config without its `seed` keys (at any depth) and NOT_SETTINGS: what runs over seeds share."""
    if isinstance(tree, dict):
        return {k: without_seeds(v) for k, v in tree.items() if k != "seed" and k not in NOT_SETTINGS}
    if isinstance(tree, list):
        return [without_seeds(v) for v in tree]
    return tree


def seed_groups(rows: list[dict], settings: Callable[[dict], dict]) -> list[list[dict]]:
    """The rows grouped by `settings(row)` with every seed removed (runs that differ only in seed), in the
    order of their first row."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        key = json.dumps(without_seeds(settings(row)), sort_keys=True, default=str)
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def seed_aggregate(groups: list[list[dict]], keys: tuple[str, ...], figures: tuple[str, ...]) -> list[dict]:
    """Per group: its `keys` (from the first row), n, and for each figure its mean and standard deviation
    (sample, n - 1; None for n = 1) over the runs that have it."""
    rows = []
    for group in groups:
        row = {key: group[0].get(key) for key in keys} | {"n": len(group)}
        row["seeds"] = ",".join(str(r.get("seed")) for r in group)
        for name in figures:
            values = [float(r[name]) for r in group if isinstance(r.get(name), int | float)]
            row[f"{name}_mean"] = statistics.fmean(values) if values else None
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def plus_minus(row: dict, name: str, shown: Callable) -> str:
    """`mean ± std` as a reader reads it (the mean alone for one run)."""
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if mean is None:
        return shown(None)
    return shown(mean) if std is None else f"{shown(mean)} ± {shown(std)}"
