"""Clean rate-distortion of rnic's shipped CPU codecs against JPEG and WebP on the sample val photos.

Each val photo (256x256 centre crop, as `data=sample` validates) is coded for real by each shipped rate
point; JPEG and WebP code the same image at the highest quality whose real rate is within that image's
learned rate (per image, so that rate allocation across images does not decide). Prints per-point means,
the gains, and BD-PSNR / BD-rate over the rate points; writes rate_distortion.png and codecs_rd.json.

    python benchmarks/codecs_rd.py [--out DIR] [--ship RUN1 RUN2 RUN3]

--ship: first write the shipped weights (rnic/weights/<arch>-mse-q<quality>.pth, the codec's state dict) from
the best checkpoints of the training run folders of quality 1, 2, 3 (in that order), then, after the
benchmark, each file's card (<file>.json beside it): architecture, widths, lambda, data, steps, wall time,
command, clean RD and the classical figures at the same rate, SHA-256.
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

from rnic import rd
from rnic.classical import LABELS, REFERENCES, matched_reference
from rnic.codecs import SHIPPED, WEIGHTS_DIR, build_codec, qualities, read_codec_state, shipped_weights
from rnic.coding import compress_decompress
from rnic.config import file_sha256
from rnic.data import SampleImages, read_image
from rnic.io import atomic_write, write_json, write_png
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


def card(quality: int, point: dict, run: Path, names: list[str], shipped_from: dict[str, str]) -> dict:
    """A shipped weights file's card, from the training run that made it."""
    config = OmegaConf.load(run / "config.yaml")
    final = json.loads((run / "final_metrics.json").read_text())
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
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
        "steps": final["step"],
        "train_seconds": final["train_seconds"],
        "command": "python train.py " + " ".join(overrides),
        # A finetuned rate point starts from another shipped file (by its name), else from scratch.
        "started_from": shipped_from.get(
            str(Path(config.model.weights).resolve()),
            f"run {Path(config.model.weights).parent.parent.name} (not shipped): {config.model.weights}",
        )
        if config.model.get("weights")
        else None,
        "val_photos": names,
        "clean": {k: point[k] for k in ("learned", *REFERENCES)},
        "means": {
            k: {"psnr": mean(point[k]["psnr"]), "bpp": mean(point[k]["bpp"])}
            for k in ("learned", *REFERENCES)
        },
    }


def learning_curves(runs: list[Path]) -> Figure:
    """Val RD loss and decoded PSNR against the optimizer step of each training run (csv/metrics.csv)."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    loss_axis, psnr_axis = fig.subplots(1, 2)
    for quality, run in zip(qualities(ARCH), runs, strict=False):
        with open(run / "csv" / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("val/clean/loss")]
        steps = [int(r["step"]) for r in rows][1:]  # the starting model's validation left out
        for axis, key in ((loss_axis, "val/clean/loss"), (psnr_axis, "val/clean/psnr_real")):
            axis.plot(
                steps, [float(r[key]) for r in rows][1:], "o-", markersize=3, label=f"quality {quality}"
            )
    loss_axis.set(xlabel="optimizer step", ylabel="val RD loss (lmbda * 255^2 * MSE + bpp)", yscale="log")
    psnr_axis.set(xlabel="optimizer step", ylabel="val PSNR, real bitstreams [dB]")
    for axis in (loss_axis, psnr_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"{ARCH}: learning curves (quality 2 from scratch; 1 and 3 finetuned from it)")
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
    parser.add_argument("--ship", type=Path, nargs="*", help="training run folders of quality 1, 2, 3")
    args = parser.parse_args()
    for quality, run in zip(qualities(ARCH), args.ship or [], strict=False):
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
        summary[anchor] = {"bd_psnr": psnr, "bd_rate": rate}
        print(f"BD-PSNR vs {anchor}: {psnr:+.2f} dB, BD-rate {rate:+.1f}%")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "codecs_rd.json", {"images": names, "points": points, "bd": summary})
    write_png(args.out / "rate_distortion.png", figure(points, names), dpi=90)
    print(f"outputs in {args.out}")
    if args.ship:
        write_png(args.out / "learning_curves.png", learning_curves(args.ship), dpi=90)
    shipped_from = {
        str((run / "checkpoints" / "best.ckpt").resolve()): shipped_weights(ARCH, "mse", quality).name
        for quality, run in zip(qualities(ARCH), args.ship or [], strict=False)
    }
    for quality, run in zip(qualities(ARCH), args.ship or [], strict=False):
        path = shipped_weights(ARCH, "mse", quality).with_suffix(".json")
        write_json(path, card(quality, points[quality - 1], run, names, shipped_from))
        print(f"card: {path}")


if __name__ == "__main__":
    main()
