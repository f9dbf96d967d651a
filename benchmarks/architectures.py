"""The architecture study: one row per codec architecture with weights (rnic's shipped CPU codecs by
default): clean rate-distortion against JPEG and WebP, size and coding time, the worst case attack=auto
finds under three threats, its cost against the paper's recipe, and (given the runs) the robust
finetuning's gain over its equal-compute clean control.

Per row, on the sample val photos (centre crops, as `data=sample` validates):
- clean RD: each rate point codes the photos for real; JPEG and WebP code each photo at the highest
  quality within its learned rate (benchmarks/codecs_rd.py's matching); BD-PSNR and BD-rate of the mean
  curves, and per image (each photo's own curve) with their spread;
- parameters, and real encode / decode wall time per image (median of 3 codings each);
- the worst case: attack.py's job (rnic.evaluation) with attack=auto, select=psnr and select=vi, under
  L-inf 4/255 and 8/255 and MSE 1e-4 (in the 16/255 box), 8-bit delivery, at one rate point: attacked
  PSNR drop (psnr) and VI (vi) per image; their attack.py run folders are kept (a rerun resumes them);
- the cost against the paper's recipe: benchmarks/worst_case.py's side-by-side of attack=auto and
  Chen & Ma's threshold attack (1000 steps) under MSE 1e-4: VI gain and time ratio;
- with --finetuned NAME RUN CONTROL: the robust finetuning's attacked-PSNR gain over its equal-compute
  clean control, per image, from both train.py runs' robust_eval (benchmarks/ship_robust.py's reading).

Prints markdown tables (means, with median and standard deviation over the images beside them) and
writes architectures.json and architectures.md into --out.

    python benchmarks/architectures.py --out benchmark_architectures

Quick look (one photo, 64 px, 2% of every attack's steps and queries):

    python benchmarks/architectures.py --images 1 --crop 64 --scale 0.02 --out /tmp/architectures_quick

Another architecture with weights: --row NAME="OVERRIDES" (attack.py overrides; {quality} is replaced by
each rate point), e.g. --row checkerboard_cpu="model=cheng2020_checkerboard model.N=64
model.weights=runs/checkerboard/q{quality}/checkpoints/best.ckpt". --rows picks among the shipped rows.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from codecs_rd import bd, rate_point  # benchmarks/, beside this script
from finetune_gain import compose_config
from ship_robust import evaluations, paired_gain
from torchvision.transforms import v2
from worst_case import against_recipe

from rnic import rd
from rnic.classical import LABELS, REFERENCES
from rnic.config import codec_from_config
from rnic.data import SampleImages, read_image
from rnic.evaluation import evaluate_robustness
from rnic.evaluation.pairs import coding_time
from rnic.io import write_json
from rnic.report.bd import bd_or_none

# The shipped architectures: attack.py overrides of each row ({quality}: each rate point).
ROWS = {
    "hyperprior_cpu": "model=bmshj2018_hyperprior_cpu model.quality={quality}",
    "mbt2018_mean_cpu": "model=mbt2018_mean_cpu model.quality={quality}",
    "mbt2018_mean_vbr_cpu": "model=mbt2018_mean_vbr_cpu model.rate={quality}",  # one file, every rate
    "elic_cpu": "model=elic_cpu model.quality={quality}",
    "tcm_cpu": "model=tcm_cpu model.quality={quality}",
}
# The threats and budgets of the worst case (attack.eps lists: one attack.py run per threat and select).
BUDGETS = {"linf": (4 / 255, 8 / 255), "mse": (1e-4,)}
SELECTS = ("psnr", "vi")


def budget_label(threat: str, eps: float) -> str:
    return f"L-inf {round(eps * 255)}/255" if threat == "linf" else f"MSE {eps:g}"


def val_photos(images: int, crop: int) -> tuple[list[str], torch.Tensor]:
    """The first `images` val photos, centre-cropped to `crop` px and rounded to 8 bits (as attack.py reads
    them: PNG samples)."""
    paths = SampleImages().splits()["val"][:images]
    x = torch.stack([v2.CenterCrop(crop)(read_image(p)) for p in paths])
    return [p.stem for p in paths], torch.round(x * 255) / 255


def row_overrides(template: str, quality: int, crop: int) -> list[str]:
    return [*shlex.split(template.format(quality=quality)), f"data.val_crop={crop}"]


def build_row_codec(template: str, quality: int, crop: int, workdir: Path) -> torch.nn.Module:
    """The row's codec at `quality`, as attack.py builds it."""
    cfg = compose_config("attack", workdir, row_overrides(template, quality, crop))
    return codec_from_config(cfg).eval()


def per_image_bd(points: list[dict], anchor: str) -> dict:
    """BD-PSNR and BD-rate of each image's own curve against `anchor`'s at that image's rates, and their
    spread over the images (an image whose curves do not allow it counts as missing)."""
    figures = {"bd_psnr": [], "bd_rate": []}
    for image in range(len(points[0]["learned"]["psnr"])):
        curves = {
            k: ([p[k]["bpp"][image] for p in points], [p[k]["psnr"][image] for p in points])
            for k in (anchor, "learned")
        }
        rate, psnr = bd_or_none(curves[anchor], curves["learned"])
        figures["bd_rate"].append(rate if rate is None else rd.finite_or_none(rate))
        figures["bd_psnr"].append(psnr if psnr is None else rd.finite_or_none(psnr))
    return {key: {"per_image": values, "spread": rd.spread(values)} for key, values in figures.items()}


def clean_rd(template: str, qualities: list[int], x: torch.Tensor, crop: int, workdir: Path) -> dict:
    """Each rate point coded for real against JPEG and WebP at the same rate per image; BD of the mean
    curves and per image."""
    points = [rate_point(build_row_codec(template, q, crop, workdir), q, x) for q in qualities]
    found = {"points": points}
    for anchor in REFERENCES:
        try:
            psnr, rate = bd(points, anchor)
        except ValueError:  # one rate point, or a curve that does not rise
            psnr = rate = None
        found[anchor] = {"bd_psnr": psnr, "bd_rate": rate, "per_image": per_image_bd(points, anchor)}
    return found


@torch.no_grad()
def size_and_speed(codec: torch.nn.Module, x: torch.Tensor) -> dict:
    codec.update(force=True)
    times = [coding_time(codec, x[i : i + 1]) for i in range(len(x))]
    return {
        "parameters": sum(p.numel() for p in codec.parameters()),
        "encode_s": rd.spread([t[0] for t in times]),
        "decode_s": rd.spread([t[1] for t in times]),
    }


def worst_case(template: str, quality: int, args, workdir: Path) -> dict:
    """attack.py's attack=auto per threat and select; per budget, each image's figures and their spread."""
    found = {}
    for threat, budgets in BUDGETS.items():
        for select in SELECTS:
            folder = args.out / "runs" / workdir.name / f"q{quality}" / f"{threat}_{select}"
            overrides = [
                *row_overrides(template, quality, args.crop),
                "attack=auto",
                f"attack.threat={threat}",
                f"attack.eps=[{','.join(repr(e) for e in budgets)}]",
                f"attack.select={select}",
                f"max_images={args.images}",
            ]
            cfg = compose_config("attack", folder, overrides)
            steps, queries = (max(1, round(cfg.attack[k] * args.scale)) for k in ("steps", "queries"))
            cfg.attack.steps, cfg.attack.queries = steps, queries
            evaluate_robustness(cfg)
            for eps in budgets:
                results = (
                    folder / f"eps_{eps:g}" / "results.json" if len(budgets) > 1 else folder / "results.json"
                )
                records = json.loads(results.read_text())["images"]
                per_image = {
                    "image": [r["image"] for r in records],
                    "psnr_clean": [r["psnr_clean"] for r in records],
                    "psnr_adv": [r["psnr_adv"] for r in records],
                    "drop": [r["psnr_clean"] - r["psnr_adv"] for r in records],
                    "vi": [r["vi"] for r in records],
                    "seconds": [r["seconds"] for r in records],
                }
                found[f"{budget_label(threat, eps)} select={select}"] = {
                    "threat": threat,
                    "eps": eps,
                    "select": select,
                    "steps": steps,
                    "queries": queries,
                    "results": str(results),
                    "per_image": per_image,
                    **{k: rd.spread(per_image[k]) for k in ("psnr_adv", "drop", "vi", "seconds")},
                }
    return found


def finetuned(run: Path, control: Path) -> dict:
    """Per threat of the runs' robust_eval: the finetuning's and the control's means, and the attacked PSNR
    gain over the control image by image."""
    ours, theirs = evaluations(run), evaluations(control)
    return {
        threat: {
            "run": str(run),
            "control": str(control),
            "threat": ours[threat]["attack"]["threat"],
            "split": ours[threat]["split"],
            "photos": len(ours[threat]["images"]),
            "eps": ours[threat]["eps"],
            "mean": ours[threat]["mean"],
            "control_mean": theirs[threat]["mean"],
            "gain_psnr_adv": paired_gain(ours[threat], theirs[threat]),
        }
        for threat in ours
        if threat in theirs
    }


# The settings a measured row depends on: a row measured under the same ones is read back, not re-measured.
ROW_SETTINGS = ("qualities", "attack_quality", "images", "crop", "scale")


def measure_row(name: str, template: str, args, finetuning: tuple[Path, Path] | None) -> dict:
    """One row's figures; kept in --out/rows/NAME.json, so that adding a row (or a finetuning) to the study
    measures only what is new."""
    stored = args.out / "rows" / f"{name}.json"
    settings = {"overrides": template, **{k: getattr(args, k) for k in ROW_SETTINGS}}
    row = json.loads(stored.read_text()) if stored.exists() else None
    if row is None or row.get("settings") != settings:
        row = {"settings": settings, **measure_codec(name, template, args)}
        write_json(stored, row)
    else:
        print(f"\n== {name}: read from {stored} (measured under the same settings)")
    if finetuning:
        row["finetuned"] = finetuned(*finetuning)
    return row


def measure_codec(name: str, template: str, args) -> dict:
    workdir = args.out / "configs" / name
    names, x = val_photos(args.images, args.crop)
    print(f"\n== {name}: {template}")
    row = {
        "overrides": template,
        "images": names,
        "clean": clean_rd(template, args.qualities, x, args.crop, workdir),
    }
    codec = build_row_codec(template, args.attack_quality, args.crop, workdir)
    row.update(size_and_speed(codec, x))
    row["worst_case"] = worst_case(template, args.attack_quality, args, workdir)
    row["against_recipe"] = against_recipe(codec, x, args.scale)
    return row


def cell(figures: dict | None, digits: int = 2) -> str:
    """A mean with its median and standard deviation over the images: '1.23 (1.10, 0.40)'."""
    if figures is None:
        return "n/a"
    return f"{figures['mean']:.{digits}f} ({figures['median']:.{digits}f}, {figures['std']:.{digits}f})"


def number(value: float | None, form: str, unit: str = "") -> str:
    """`value` formatted, or n/a (e.g. BD-rate where the two curves share no PSNR range)."""
    return "n/a" if value is None else format(value, form) + unit


def tables(rows: dict[str, dict]) -> str:
    """The study's markdown tables: clean RD and size, then the worst case and its cost, then finetuning."""
    header = " | ".join(f"BD-PSNR vs {LABELS[a]} [dB] | BD-rate vs {LABELS[a]}" for a in REFERENCES)
    lines = [f"| architecture | parameters | encode / decode [s per image] | {header} |"]
    lines.append("|---" * (3 + 2 * len(REFERENCES)) + "|")
    for name, row in rows.items():
        clean = row["clean"]
        bd_cells = []
        for anchor in REFERENCES:
            figures = clean[anchor]
            spread = figures["per_image"]
            bd_cells.append(
                f"{number(figures['bd_psnr'], '+.2f')}; per image {cell(spread['bd_psnr']['spread'])} | "
                f"{number(figures['bd_rate'], '+.1f', '%')}; per image {cell(spread['bd_rate']['spread'], 1)}"
            )
        coding = f"{cell(row['encode_s'], 3)} / {cell(row['decode_s'], 3)}"
        lines.append(f"| {name} | {row['parameters'] / 1e6:.2f} M | {coding} | {' | '.join(bd_cells)} |")
    cases = next(iter(rows.values()))["worst_case"]
    budgets = list(dict.fromkeys(k.split(" select=")[0] for k in cases))
    header = " | ".join(f"{b}: PSNR drop (select=psnr) [dB] | {b}: VI (select=vi) [dB]" for b in budgets)
    lines += ["", f"| architecture | {header} | auto vs recipe (MSE 1e-4): VI gain [dB], time ratio |"]
    lines.append("|---" * (2 + 2 * len(budgets)) + "|")
    for name, row in rows.items():
        found, recipe = row["worst_case"], row["against_recipe"]
        attacked = " | ".join(
            f"{cell(found[f'{b} select=psnr']['drop'])} | {cell(found[f'{b} select=vi']['vi'])}"
            for b in budgets
        )
        lines.append(
            f"| {name} | {attacked} | {number(recipe['vi_gain'], '+.2f')}, {recipe['time_ratio']:.2f}x |"
        )
    tuned = {name: row["finetuned"] for name, row in rows.items() if "finetuned" in row}
    if tuned:
        lines += ["", *finetuning_table(tuned)]
    return "\n".join(lines)


def finetuning_table(tuned: dict[str, dict]) -> list[str]:
    """Per architecture and robust evaluation (its threat, split and photos as its results record them):
    the finetuning against its control."""
    lines = [
        "| architecture | threat, photos | attacked PSNR: finetuned / control [dB] | gain per image [dB] "
        "| VI: finetuned / control [dB] | clean PSNR [dB] / bpp: finetuned; control |",
        "|---|---|---|---|---|---|",
    ]
    for name, threats in tuned.items():
        for t in sorted(threats.values(), key=lambda t: (t["threat"], t["split"] != "val", t["split"])):
            ours, theirs = t["mean"], t["control_mean"]
            attacked = f"{ours['psnr_adv']:.2f} / {theirs['psnr_adv']:.2f}"
            vi = f"{number(ours['vi'], '.2f')} / {number(theirs['vi'], '.2f')}"
            clean = (
                f"{ours['psnr_clean']:.2f} / {ours['bpp_clean']:.3f}; "
                f"{theirs['psnr_clean']:.2f} / {theirs['bpp_clean']:.3f}"
            )
            label = f"{budget_label(t['threat'], t['eps'])}, {t['split']} ({t['photos']})"
            lines.append(f"| {name} | {label} | {attacked} | {cell(t['gain_psnr_adv'])} | {vi} | {clean} |")
    return lines


def parse_rows(args) -> dict[str, str]:
    rows = {name: ROWS[name] for name in args.rows}
    for spec in args.row:
        name, _, template = spec.partition("=")
        if not name or not template:
            raise SystemExit(f'error: --row {spec!r}: write NAME="OVERRIDES"')
        rows[name] = template
    if not rows:
        raise SystemExit("error: no rows: give --rows and/or --row")
    for name, *_ in args.finetuned:
        if name not in rows:
            raise SystemExit(f"error: --finetuned {name}: no such row (rows: {', '.join(rows)})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--row", action="append", default=[], help='NAME="attack.py overrides" ({quality})')
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 2, 3], help="the rate points")
    parser.add_argument("--attack-quality", type=int, default=2, help="the rate point attacked")
    parser.add_argument("--images", type=int, default=4, help="the first N val photos")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--scale", type=float, default=1.0, help="times every attack's steps and queries")
    parser.add_argument(
        "--finetuned",
        nargs=3,
        action="append",
        default=[],
        metavar=("ROW", "RUN", "CONTROL"),
        help="train.py runs of a row's codec: robust, and its equal-compute clean control",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark_architectures"))
    args = parser.parse_args()
    rows = parse_rows(args)
    finetunings = {name: (Path(run), Path(control)) for name, run, control in args.finetuned}
    measured = {
        name: measure_row(name, template, args, finetunings.get(name)) for name, template in rows.items()
    }
    table = tables(measured)
    print(f"\n{table}")
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(
        args.out / "architectures.json",
        {"command": " ".join(sys.argv), "settings": settings, "rows": measured},
    )
    (args.out / "architectures.md").write_text(table + "\n")
    print(f"outputs in {args.out}")


if __name__ == "__main__":
    main()
