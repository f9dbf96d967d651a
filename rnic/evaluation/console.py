"""What attack.py prints after each budget: the per-image table with the mean, the classical references,
the ensemble members, the defense's clean cost and the certificate."""

from __future__ import annotations

from rnic import rd
from rnic.classical import REFERENCES, reference_line
from rnic.defenses.smoothing import certificate_table, certified_means
from rnic.rate_certificate import rate_means, rate_table


def text_cell(value: float | None, column: str) -> str:
    if value is None:  # null: an unbounded PSNR (identical images) or an undefined VI
        return "inf" if column.startswith("psnr") else "n/a"
    return f"{value:.3f}"


SPREAD_ROWS = (
    ("median", lambda s: s["median"]),
    ("std", lambda s: s["std"]),
    ("ci95_low", lambda s: s["ci95"][0]),
    ("ci95_high", lambda s: s["ci95"][1]),
)


def results_table(records: list[dict], mean: dict) -> str:
    shown = ("psnr_in", "linf", "psnr_clean", "psnr_adv", "bpp_clean", "bpp_adv", "vi", "msssim_adv")
    width = max([len(r["image"]) for r in records] + [9])
    lines = [f"{'image':<{width}} " + " ".join(f"{c:>11}" for c in shown)]
    rows = [*records, {"image": "mean", **mean}]
    if len(records) > 1:  # over the images: one image can carry a mean over a few
        spreads = {c: rd.spread(r[c] for r in records) for c in shown}
        for name, pick in SPREAD_ROWS:
            rows.append({"image": name, **{c: None if s is None else pick(s) for c, s in spreads.items()}})
    for row in rows:
        cells = " ".join(f"{text_cell(row[c], c):>11}" for c in shown)
        lines.append(f"{row['image']:<{width}} {cells}")
    if any((r["vi"] or 0) < 0 for r in records):
        lines.append(f"({rd.NEGATIVE_VI})")
    return "\n".join(lines)


def format_members(members: dict[str, dict]) -> str:
    width = max(len(name) for name in members)
    lines = [f"{'member':<{width}}  {'wins':>5}  {'psnr_adv':>9}  {'vi':>7}  skipped"]
    for name, row in members.items():
        lines.append(
            f"{name:<{width}}  {row['wins']:>5}  {text_cell(row['psnr_adv'], 'psnr'):>9}  "
            f"{text_cell(row['vi'], 'vi'):>7}  {row['skipped'] or ''}"
        )
    return "\n".join(lines)


def defense_line(names: list[str], adaptive: bool, mean: dict) -> str:
    how = "adaptive (through the defence)" if adaptive else "non-adaptive (undefended codec)"
    undefended = mean.get("psnr_adv_undefended")
    return (
        f"\ndefense={'+'.join(names)}, attack {how}: clean cost "
        f"{text_cell(mean['psnr_cost'], 'cost')} dB PSNR, {text_cell(mean['bpp_cost'], 'cost')} bpp"
        + (
            f"; without the defence the attacked PSNR is {text_cell(undefended, 'psnr')}"
            if undefended is not None
            else ""
        )
    )


def budget_summary(
    attack,
    records: list[dict],
    mean: dict,
    members: dict[str, dict],
    defense: list[str] | None,
    adaptive: bool,
    certified: bool,
) -> str:
    """The text printed after a budget's run (`defense`: the defenses' names, None without any)."""
    lines = [f"\n{attack} on {len(records)} image(s), real bitstreams:\n" + results_table(records, mean)]
    if mean.get("psnr_jpeg") is not None:
        figures = {n: {"psnr": mean[f"psnr_{n}"], "bpp": mean[f"bpp_{n}"]} for n in REFERENCES}
        lines.append(reference_line(mean["psnr_clean"], figures))
    if members:
        lines.append(
            "\nensemble members (decoded figures; wins: images where the member was the worst case):"
        )
        lines.append(format_members(members))
    if defense is not None:
        lines.append(defense_line(defense, adaptive, mean))
    if certified:
        lines.append(certificate_table(certified_means(records)))
    if any("certified_rate" in r for r in records):
        lines.append(rate_table(rate_means(records)))
    return "\n".join(lines)
