"""Clean rate-distortion of one of rnic's shipped CPU codecs against JPEG and WebP on the sample val (or test)
photos.

Each val photo (256x256 centre crop, as `data=sample` validates) is coded for real by each shipped rate
point (those whose weights exist); JPEG and WebP code the same image at the highest quality whose real
rate is within that image's learned rate (per image, so that rate allocation across images does not
decide). Prints per-point means, the gains, and BD-PSNR / BD-rate over the rate points; writes
rate_distortion.png and codecs_rd.json.

    python benchmarks/codecs_rd.py [--arch bmshj2018_hyperprior_cpu|mbt2018_mean_cpu|mbt2018_mean_vbr_cpu|
        elic_cpu|tcm_cpu] [--out DIR] [--ship RUN ...] [--weights-dir DIR] [--split val|test]

--ship: first write the shipped weights (rnic/weights/<arch>-mse-q<quality>.pth, the codec's state dict) from
the best checkpoint of each training run folder (its quality: the rate point whose lambda the run trained
with; the checkpoint must load into --arch at its shipped widths), then, after the benchmark, each file's
card (<file>.json beside it): architecture, widths, lambda, data, steps, wall time, command, the val
learning curve, clean RD and the classical figures at the same rate, SHA-256. The other
rate points keep their weights and cards. learning_curves.png is drawn from the cards that hold a curve.
A variable-rate codec's run trained every rate: it ships as one file (rnic/weights/<arch>-mse.pth) with a
card per rate; the learning curve is in the card of the rate it validated at (model.rate).
--weights-dir: read and write the shipped files there instead of rnic/weights/ (a dry run of --ship).
--split test: the 8 test photos instead of the val ones (no setting was chosen on them; no cards written).

    python benchmarks/codecs_rd.py --arch elic_cpu --ship RUN_Q1 RUN_Q2 RUN_Q3
    python benchmarks/codecs_rd.py --arch mbt2018_mean_vbr_cpu --ship RUN
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from torchvision.transforms import v2

from rnic import codecs, rd
from rnic.classical import LABELS, REFERENCES, matched_reference
from rnic.codecs import (
    SHIPPED,
    build_codec,
    is_variable_rate_shipped,
    load_weights,
    qualities,
    rd_lambda,
    read_codec_state,
    shipped_architecture,
    shipped_card,
    shipped_path,
    shipped_weights,
)
from rnic.coding import compress_decompress
from rnic.data import SampleImages, read_image
from rnic.evaluation.card import portable, versions
from rnic.io import equal_states, file_sha256, write_json, write_png, write_state
from rnic.report.bd import bd_psnr, bd_rate

CROP = 256


def sample_photos(split: str = "val") -> tuple[list[str], torch.Tensor]:
    """The names and centre crops of a data=sample split's photos (val: the cards'; test: no choice made)."""
    paths = SampleImages().splits()[split]
    return [p.stem for p in paths], torch.stack([v2.CenterCrop(CROP)(read_image(p)) for p in paths])


def training_data(config) -> str:
    """What a run trained on, from its config: the train photos (data=sample, or data=photos with the extra
    ones), the crops and batch, the augmentation."""
    source = config.data.source
    extra = bool(source.get("extra_train"))
    photos = SampleImages(fractions=source.fractions, seed=source.seed, extra_train=extra).splits()["train"]
    name = "data=photos" if extra else "data=sample"
    crop = config.data.patch_size
    return (
        f"{name}: {len(photos)} train photos (random {crop}x{crop} crops, batch {config.data.batch_size}, "
        f"augment={config.data.augment}); never the val or test photos"
    )


def rate_point(codec: torch.nn.Module, quality: int, x: torch.Tensor) -> dict:
    """One rate point's real bitstreams of `x` and JPEG's and WebP's per image at the same rate."""
    codec.eval().update(force=True)
    x_hat, bpp = compress_decompress(codec, x)
    learned = {"psnr": rd.psnr(x_hat, x).tolist(), "bpp": bpp.tolist()}
    return {"quality": quality, "learned": learned, **matched_reference(x, learned["bpp"])}


def mean(values) -> float:
    return statistics.fmean(values)


def bd(points: list[dict], anchor: str) -> tuple[float | None, float | None]:
    """BD-PSNR and BD-rate of the learned curve against `anchor`'s (means per rate point); None where the
    curves share no range to integrate over (BD-PSNR: of rates, BD-rate: of PSNRs)."""
    curve = {
        k: ([mean(p[k]["bpp"]) for p in points], [mean(p[k]["psnr"]) for p in points])
        for k in (anchor, "learned")
    }
    psnr, rate = bd_psnr(*curve[anchor], *curve["learned"]), bd_rate(*curve[anchor], *curve["learned"])
    return rd.finite_or_none(psnr), rd.finite_or_none(rate)


def bd_summary(points: list[dict]) -> dict[str, dict]:
    """BD-PSNR and BD-rate against each classical anchor (`bd`), printed; an anchor without a curve is left
    out."""
    summary = {}
    for anchor in REFERENCES:
        try:
            psnr, rate = bd(points, anchor)
        except ValueError as err:  # one rate point, or a curve whose PSNR does not rise with its rate
            print(f"BD vs {anchor}: n/a ({err})")
            continue
        summary[anchor] = {"bd_psnr": psnr, "bd_rate": rate}
        shown_psnr = f"{psnr:+.2f} dB" if psnr is not None else "n/a (the curves share no rate range)"
        shown_rate = f"{rate:+.1f}%" if rate is not None else "n/a (the curves share no PSNR range)"
        print(f"BD-PSNR vs {anchor}: {shown_psnr}, BD-rate {shown_rate}")
    return summary


def shipped_points(arch: str, x: torch.Tensor) -> list[dict]:
    """The rate points of `arch` whose weights ship (in the weights folder), each coded for real."""
    points = []
    for quality in qualities(arch):
        try:
            codec = build_codec(arch, quality=quality, pretrained=True)
        except FileNotFoundError as err:
            print(f"skipped: {err}")
            continue
        points.append(rate_point(codec, quality, x))
    return points


def figure(points: list[dict], names: list[str], arch: str, split: str = "val") -> Figure:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    axis = fig.subplots()
    for key, style in (("learned", "o-"), *((r, "s--") for r in REFERENCES)):
        label = f"{arch} (shipped)" if key == "learned" else f"{LABELS[key]}, same rate per image"
        axis.plot(
            [mean(p[key]["bpp"]) for p in points], [mean(p[key]["psnr"]) for p in points], style, label=label
        )
    axis.set(
        xlabel="bpp (real bitstreams, mean over images)",
        ylabel="PSNR [dB] (mean over images)",
        title=f"Clean rate-distortion on the {len(names)} sample {split} photos ({CROP}x{CROP} crops)",
    )
    axis.grid(alpha=0.3)
    axis.legend()
    return fig


def run_qualities(run: Path, arch: str) -> list[int]:
    """The rate points of `arch` a training run trained: the one whose lambda it trained with, or every
    rate of a variable-rate codec."""
    config = OmegaConf.load(run / "config.yaml")
    if is_variable_rate_shipped(arch):
        if config.model.codec.arch != arch:
            raise SystemExit(
                f"error: {run} trained model={config.model.codec.arch}, not the variable-rate {arch}"
            )
        return list(qualities(arch))
    lmbda = config.module.lmbda
    if lmbda is None:  # the lambda of the run's own quality
        lmbda = rd_lambda("mse", config.model.quality, config.module.get("arch"))
    table = SHIPPED[arch]["lambdas"]["mse"]
    if lmbda not in table:
        raise SystemExit(
            f"error: {run} trained with lambda {lmbda}, no rate point of {arch} (lambdas {list(table)})"
        )
    return [table.index(lmbda) + 1]


def val_curve(run: Path) -> dict[str, list[float]]:
    """The run's validations (csv/metrics.csv): step, val RD loss and decoded PSNR on real bitstreams."""
    with open(run / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/clean/loss")]
    return {
        "step": [int(r["step"]) for r in rows],
        "loss": [float(r["val/clean/loss"]) for r in rows],
        "psnr": [float(r["val/clean/psnr_real"]) for r in rows],
    }


def started_from(weights: str | None, shipped_from: dict[str, str]) -> str | None:
    """What a finetuned rate point started from: a shipped file (by name) or another run; None: scratch."""
    if not weights:
        return None
    path = Path(weights).resolve()
    if path.parent == codecs.WEIGHTS_DIR.resolve():
        return path.name
    return shipped_from.get(str(path), f"run {path.parent.parent.name} (not shipped): {weights}")


def card(point: dict, run: Path, names: list[str], shipped_from: dict[str, str], arch: str) -> dict:
    """A shipped weights file's card, from the training run that made it."""
    config = OmegaConf.load(run / "config.yaml")
    final = json.loads((run / "final_metrics.json").read_text())
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    quality = point["quality"]
    path = shipped_weights(arch, "mse", quality)
    # A variable-rate run validated at one rate (model.rate): the curve is that rate's.
    validated = not is_variable_rate_shipped(arch) or int(config.model.rate) == quality
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        **shipped_architecture(arch),
        "quality": quality,
        "lmbda": rd_lambda("mse", quality, arch),
        "metric": "mse",
        "data": training_data(config),
        "data_licences": SampleImages.licences(bool(config.data.source.get("extra_train"))),
        # The libraries that coded the val photos to the bitstreams this card records.
        "verified_with": versions(),
        "steps": final["step"],
        "train_seconds": final["train_seconds"],
        "command": "python train.py " + " ".join(overrides),
        "started_from": started_from(config.model.get("weights"), shipped_from),
        "val_photos": names,
        **({"learning_curve": val_curve(run)} if validated else {}),
        "clean": {k: point[k] for k in ("learned", *REFERENCES)},
        "means": {
            k: {"psnr": mean(point[k]["psnr"]), "bpp": mean(point[k]["bpp"])}
            for k in ("learned", *REFERENCES)
        },
    }


def learning_curves(cards: dict[int, dict], arch: str) -> Figure:
    """Val RD loss and decoded PSNR against the optimizer step, per rate point whose card holds its curve."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    loss_axis, psnr_axis = fig.subplots(1, 2)
    for quality, curve in ((q, c["learning_curve"]) for q, c in cards.items() if "learning_curve" in c):
        # The first validation is that of the starting model, before any step.
        for axis, key in ((loss_axis, "loss"), (psnr_axis, "psnr")):
            axis.plot(curve["step"][1:], curve[key][1:], "o-", markersize=3, label=f"quality {quality}")
    loss_axis.set(xlabel="optimizer step", ylabel="val RD loss (lmbda * 255^2 * MSE + bpp)", yscale="log")
    psnr_axis.set(xlabel="optimizer step", ylabel="val PSNR, real bitstreams [dB]")
    for axis in (loss_axis, psnr_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"{arch}: learning curves of the shipped rate points")
    return fig


def shipped_checkpoints(run: Path) -> list[Path]:
    """The checkpoints of a run that hold the weights it ships: best.ckpt, and last.ckpt where it holds the
    same weights (a run that started from either started from the shipped file)."""
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return [best]
    # The range coder's tables are rebuilt from the weights by update() (at each validation): not compared.
    tables = ("_quantized_cdf", "_offset", "_cdf_length")
    shipped, final = (
        {k: v for k, v in read_codec_state(path)[0].items() if not k.endswith(tables)}
        for path in (best, last)
    )
    return [best, last] if equal_states(shipped, final) else [best]


def ship(checkpoint: Path, arch: str, quality: int) -> None:
    """The codec's weights of an rnic checkpoint as a plain state dict (what `load_weights` reads), refused
    unless they load into `arch` as shipped (its widths and settings)."""
    try:
        load_weights(build_codec(arch, quality=quality), checkpoint)
    except ValueError as err:
        raise SystemExit(f"error: {checkpoint} is not a checkpoint of {arch}: {err}") from None
    state, _ = read_codec_state(checkpoint)
    target = shipped_path(arch, "mse", quality)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_state(target, state)
    print(f"shipped {checkpoint} as {target}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="bmshj2018_hyperprior_cpu", choices=list(SHIPPED))
    parser.add_argument("--out", type=Path, default=Path("benchmark_codecs"))
    parser.add_argument("--ship", type=Path, nargs="*", default=[], help="training run folders to ship")
    parser.add_argument("--weights-dir", type=Path, help="the shipped files' folder (default rnic/weights)")
    parser.add_argument(
        "--split", default="val", choices=["val", "test"], help="photos coded (cards: val, where they chose)"
    )
    args = parser.parse_args()
    if args.ship and args.split != "val":
        parser.error("--ship writes cards of the val photos: leave --split at val")
    arch = args.arch
    if args.weights_dir is not None:
        codecs.WEIGHTS_DIR = args.weights_dir.resolve()
    runs = {quality: run for run in args.ship for quality in run_qualities(run, arch)}
    # Where a run started from another run that ships in the same call, its card names the shipped file.
    # A run's quality q names its file, whether or not that exists yet.
    shipped_from = {
        str(path.resolve()): shipped_path(arch, "mse", q).name
        for q, run in runs.items()
        for path in shipped_checkpoints(run)
    }
    written = set()
    for quality, run in runs.items():
        if (target := shipped_path(arch, "mse", quality)) not in written:  # a variable-rate one: one file
            ship(run / "checkpoints" / "best.ckpt", arch, quality)
            written.add(target)
    names, x = sample_photos(args.split)
    points = shipped_points(arch, x)
    print(f"{arch} on the sample {args.split} photos ({CROP}x{CROP}), real bitstreams;")
    print("JPEG and WebP per image at the highest quality within its learned rate")
    print(
        f"{'quality':>7} {'bpp':>6} {'PSNR':>6} {'JPEG':>6} {'gain':>6} {'WebP':>6} {'gain':>6}"
        "   per image (learned/JPEG/WebP)"
    )
    for p in points:
        learned, jpeg, webp = (mean(p[k]["psnr"]) for k in ("learned", "jpeg", "webp"))
        per_image = ", ".join(
            f"{n} {a:.2f}/{b:.2f}/{c:.2f}"
            for n, a, b, c in zip(
                names, p["learned"]["psnr"], p["jpeg"]["psnr"], p["webp"]["psnr"], strict=True
            )
        )
        print(
            f"{p['quality']:>7} {mean(p['learned']['bpp']):>6.3f} {learned:>6.2f} {jpeg:>6.2f} "
            f"{learned - jpeg:>+6.2f} {webp:>6.2f} {learned - webp:>+6.2f}   {per_image}"
        )
    summary = bd_summary(points)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "codecs_rd.json", {"images": names, "points": points, "bd": summary})
    write_png(args.out / "rate_distortion.png", figure(points, names, arch, args.split), dpi=90)
    print(f"outputs in {args.out}")
    by_quality = {p["quality"]: p for p in points}
    for quality, run in runs.items():
        path = shipped_card(arch, "mse", quality)
        write_json(path, portable(card(by_quality[quality], run, names, shipped_from, arch), run))
        print(f"card: {path}")
    cards = {
        q: json.loads(path.read_text())
        for q in by_quality
        if (path := shipped_card(arch, "mse", q)).is_file()
    }
    write_png(args.out / "learning_curves.png", learning_curves(cards, arch), dpi=90)


if __name__ == "__main__":
    main()
