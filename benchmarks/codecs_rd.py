"""Clean rate-distortion of rnic's shipped CPU codecs against JPEG and WebP on the sample val photos.

Each val photo (256x256 centre crop, as `data=sample` validates) is coded for real by each shipped rate
point; JPEG and WebP code the same image at the highest quality whose real rate is within that image's
learned rate (per image, so that rate allocation across images does not decide). Prints per-point means,
the gains, and BD-PSNR / BD-rate over the rate points; writes rate_distortion.png and codecs_rd.json.

    python benchmarks/codecs_rd.py [--out DIR] [--ship RUN [RUN ...]]

--ship: first write the shipped weights (rnic/weights/<arch>-mse-q<quality>.pth, the codec's state dict) from
the best checkpoint of each training run folder (its quality read from its config.yaml), then, after the
benchmark, each file's card (<file>.json beside it): architecture, widths, lambda, data, steps, wall time,
command, the val learning curve, clean RD and the classical figures at the same rate, SHA-256. The other
rate points keep their weights and cards. learning_curves.png is drawn from the cards that hold a curve.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from torchvision.transforms import v2

from rnic import rd
from rnic.card import portable, versions
from rnic.classical import LABELS, REFERENCES, matched_reference
from rnic.codecs import SHIPPED, WEIGHTS_DIR, build_codec, qualities, read_codec_state, shipped_weights
from rnic.coding import compress_decompress
from rnic.data import SampleImages, read_image
from rnic.io import atomic_write, file_sha256, write_json, write_png
from rnic.report.bd import bd_psnr, bd_rate

ARCH = "bmshj2018_hyperprior_cpu"
CROP = 256


def val_photos() -> tuple[list[str], torch.Tensor]:
    paths = SampleImages().splits()["val"]
    return [p.stem for p in paths], torch.stack([v2.CenterCrop(CROP)(read_image(p)) for p in paths])


def rate_point(quality: int, x: torch.Tensor) -> dict:
    codec = build_codec(ARCH, quality=quality, pretrained=True).eval()
    codec.update(force=True)
    x_hat, bpp = compress_decompress(codec, x)
    learned = {"psnr": rd.psnr(x_hat, x).tolist(), "bpp": bpp.tolist()}
    return {"quality": quality, "learned": learned, **matched_reference(x, learned["bpp"])}


def mean(values) -> float:
    return statistics.fmean(values)


def bd(points: list[dict], anchor: str) -> tuple[float, float]:
    """BD-PSNR and BD-rate of the learned curve against `anchor`'s (means per rate point)."""
    curve = {
        k: ([mean(p[k]["bpp"]) for p in points], [mean(p[k]["psnr"]) for p in points])
        for k in (anchor, "learned")
    }
    return bd_psnr(*curve[anchor], *curve["learned"]), bd_rate(*curve[anchor], *curve["learned"])


def figure(points: list[dict], names: list[str]) -> Figure:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    axis = fig.subplots()
    for key, style in (("learned", "o-"), *((r, "s--") for r in REFERENCES)):
        label = f"{ARCH} (shipped)" if key == "learned" else f"{LABELS[key]}, same rate per image"
        axis.plot(
            [mean(p[key]["bpp"]) for p in points], [mean(p[key]["psnr"]) for p in points], style, label=label
        )
    axis.set(
        xlabel="bpp (real bitstreams, mean over images)",
        ylabel="PSNR [dB] (mean over images)",
        title=f"Clean rate-distortion on the {len(names)} sample val photos ({CROP}x{CROP} crops)",
    )
    axis.grid(alpha=0.3)
    axis.legend()
    return fig


def run_quality(run: Path) -> int:
    return int(OmegaConf.load(run / "config.yaml").model.quality)


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
    if path.parent == WEIGHTS_DIR.resolve():
        return path.name
    return shipped_from.get(str(path), f"run {path.parent.parent.name} (not shipped): {weights}")


def card(point: dict, run: Path, names: list[str], shipped_from: dict[str, str]) -> dict:
    """A shipped weights file's card, from the training run that made it."""
    config = OmegaConf.load(run / "config.yaml")
    final = json.loads((run / "final_metrics.json").read_text())
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    quality = int(config.model.quality)
    path = shipped_weights(ARCH, "mse", quality)
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "architecture": SHIPPED[ARCH]["zoo"],
        "widths": {"N": SHIPPED[ARCH]["widths"][0], "M": SHIPPED[ARCH]["widths"][1]},
        "quality": quality,
        "lmbda": final.get("lmbda") or config.module.lmbda,
        "metric": "mse",
        "data": "data=sample: 12 train photos (random 128x128 crops, batch 8); never the 4 val photos",
        "data_licences": SampleImages.licences(),
        # The libraries that coded the val photos to the bitstreams this card records.
        "verified_with": versions(),
        "steps": final["step"],
        "train_seconds": final["train_seconds"],
        "command": "python train.py " + " ".join(overrides),
        "started_from": started_from(config.model.get("weights"), shipped_from),
        "val_photos": names,
        "learning_curve": val_curve(run),
        "clean": {k: point[k] for k in ("learned", *REFERENCES)},
        "means": {
            k: {"psnr": mean(point[k]["psnr"]), "bpp": mean(point[k]["bpp"])}
            for k in ("learned", *REFERENCES)
        },
    }


def learning_curves(cards: dict[int, dict]) -> Figure:
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
    fig.suptitle(f"{ARCH}: learning curves of the shipped rate points")
    return fig


def ship(checkpoint: Path, target: Path) -> None:
    """The codec's weights of an rnic checkpoint as a plain state dict (what `load_weights` reads)."""
    state, _ = read_codec_state(checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: torch.save(state, tmp))
    print(f"shipped {checkpoint} as {target}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark_codecs"))
    parser.add_argument("--ship", type=Path, nargs="*", default=[], help="training run folders to ship")
    args = parser.parse_args()
    runs = {run_quality(run): run for run in args.ship}
    # Where a run started from another run that ships in the same call, its card names the shipped file.
    shipped_from = {
        str((run / "checkpoints" / "best.ckpt").resolve()): shipped_weights(ARCH, "mse", q).name
        for q, run in runs.items()
    }
    for quality, run in runs.items():
        ship(run / "checkpoints" / "best.ckpt", WEIGHTS_DIR / f"{ARCH}-mse-q{quality}.pth")
    names, x = val_photos()
    points = [rate_point(q, x) for q in qualities(ARCH)]
    print(f"{ARCH} on the sample val photos ({CROP}x{CROP}), real bitstreams;")
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
    summary = {}
    for anchor in REFERENCES:
        psnr, rate = bd(points, anchor)
        # BD-rate integrates over the PSNR range both curves cover; there may be none.
        rate = rate if math.isfinite(rate) else None
        summary[anchor] = {"bd_psnr": psnr, "bd_rate": rate}
        shown = f"{rate:+.1f}%" if rate is not None else "n/a (the curves share no PSNR range)"
        print(f"BD-PSNR vs {anchor}: {psnr:+.2f} dB, BD-rate {shown}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "codecs_rd.json", {"images": names, "points": points, "bd": summary})
    write_png(args.out / "rate_distortion.png", figure(points, names), dpi=90)
    print(f"outputs in {args.out}")
    for quality, run in runs.items():
        path = shipped_weights(ARCH, "mse", quality).with_suffix(".json")
        write_json(path, portable(card(points[quality - 1], run, names, shipped_from), run))
        print(f"card: {path}")
    cards = {
        q: json.loads(shipped_weights(ARCH, "mse", q).with_suffix(".json").read_text())
        for q in qualities(ARCH)
    }
    write_png(args.out / "learning_curves.png", learning_curves(cards), dpi=90)


if __name__ == "__main__":
    main()
