"""Robustness evaluation: attack each image, code clean and adversarial images with the real
entropy coder, and report per image and on average (what attack.py runs)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torchvision.transforms import v2
from tqdm import tqdm

from rnic import rd
from rnic.data import SPLITS, ImageDataset, image_size, read_image
from rnic.io import atomic_write, write_csv, write_json, write_png
from rnic.module import MS_SSIM_MIN_SIDE
from rnic.training import attack_spec, build, build_attacks, build_codec

log = logging.getLogger(__name__)

COLUMNS = (
    "psnr_in", "linf", "psnr_clean", "psnr_adv", "psnr_adv_in", "msssim_clean", "msssim_adv",
    "bpp_clean", "bpp_adv", "vi", "vi_msssim", "seconds",
)  # fmt: skip


def finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded figure (e.g. PSNR of an untouched image) becomes null."""
    value = float(value)
    return value if math.isfinite(value) else None


def db(ratio: torch.Tensor) -> float | None:
    return finite(10 * torch.log10(ratio))


@torch.no_grad()
def measure(
    codec: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Real-bitstream figures of one image and its adversarial version (batch of one)."""
    clean_hat, bpp_clean = rd.code(codec, x)
    adv_hat, bpp_adv = rd.code(codec, x_adv)
    mse_in = rd.mse(x_adv, x)
    record = {
        "psnr_in": finite(rd.psnr(x_adv, x)),
        "linf": float((x_adv - x).abs().max() * 255),
        "psnr_clean": finite(rd.psnr(clean_hat, x)),
        "psnr_adv": finite(rd.psnr(adv_hat, x)),
        "psnr_adv_in": finite(rd.psnr(adv_hat, x_adv)),
        "msssim_clean": None,
        "msssim_adv": None,
        "bpp_clean": float(bpp_clean),
        "bpp_adv": float(bpp_adv),
        "vi": db(rd.mse(adv_hat, clean_hat) / mse_in),
        "vi_msssim": None,
    }
    if min(x.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        record["msssim_clean"] = float(rd.ms_ssim(clean_hat, x))
        record["msssim_adv"] = float(rd.ms_ssim(adv_hat, x))
        record["vi_msssim"] = db((1 - rd.ms_ssim(adv_hat, clean_hat)) / (1 - rd.ms_ssim(x_adv, x)))
    return record, clean_hat, adv_hat


def mean_of(records: list[dict]) -> dict:
    means = {}
    for column in COLUMNS:
        values = [r[column] for r in records if r.get(column) is not None]
        means[column] = float(np.mean(values)) if values else None
    means["images"] = len(records)
    return means


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def save_panel(path: Path, name: str, x, x_adv, clean_hat, adv_hat, record: dict) -> None:
    delta = x_adv - x
    gain = 0.5 / max(float(delta.abs().max()), 1e-8)
    panels = [
        (x, "source"),
        (x_adv, f"adversarial ({_fmt(record['psnr_in'])} dB)"),
        (0.5 + gain * delta, f"perturbation x{gain:.0f}"),
        (clean_hat, f"clean rec. {_fmt(record['psnr_clean'])} dB, {record['bpp_clean']:.3f} bpp"),
        (adv_hat, f"adv. rec. {_fmt(record['psnr_adv'])} dB, {record['bpp_adv']:.3f} bpp"),
    ]
    figure = Figure(figsize=(20, 4.6), layout="constrained")
    axes = figure.subplots(1, 5)
    for axis, (image, title) in zip(axes, panels, strict=True):
        axis.imshow(to_uint8(image[0]))
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    figure.suptitle(f"{name}: VI {_fmt(record['vi'])} dB")
    write_png(path, figure, dpi=80)


def _fmt(value: float | None) -> str:
    return "inf" if value is None else f"{value:.2f}"


def save_curve(path: Path, curve: list[dict], title: str) -> None:
    points = sorted((c for c in curve if c["psnr_in"] is not None), key=lambda c: c["psnr_in"])
    psnr_in = [c["psnr_in"] for c in points]
    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.plot(psnr_in, [c["psnr_adv"] for c in points], "o-", label="attacked")
    left.plot(psnr_in, [c["psnr_clean"] for c in points], "s--", label="clean")
    left.set(xlabel="input PSNR [dB] (adversarial vs source)", ylabel="reconstruction PSNR [dB]")
    left.legend()
    right.plot(psnr_in, [c["vi"] for c in points], "o-")
    right.set(xlabel="input PSNR [dB] (adversarial vs source)", ylabel="vulnerability index VI [dB]")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    write_png(path, figure, dpi=80)


def format_table(records: list[dict], mean: dict) -> str:
    shown = ("psnr_in", "linf", "psnr_clean", "psnr_adv", "bpp_clean", "bpp_adv", "vi", "msssim_adv")
    width = max([len(r["image"]) for r in records] + [5])
    lines = [f"{'image':<{width}} " + " ".join(f"{c:>11}" for c in shown)]
    for row in [*records, {"image": "mean", **mean}]:
        cells = " ".join(f"{_fmt(row[c]) if row[c] is None else format(row[c], '.3f'):>11}" for c in shown)
        lines.append(f"{row['image']:<{width}} {cells}")
    return "\n".join(lines)


def image_names(paths: list[Path]) -> list[str]:
    """Unique names: file stems, or where stems repeat (Vimeo's im1.png), the path below the
    images' common folder without suffix, '/' -> '_'."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [str(p.relative_to(root).with_suffix("")).replace(os.sep, "_") for p in paths]


class Evaluation:
    """One attack.py run: every image of a split, for every budget."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.output_dir = Path(cfg.paths.output_dir)
        _, self.options, self.budgets = attack_spec(cfg.attack)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        )

        # Everything that can be wrong is found here, before any attack runs.
        datamodule = build(cfg.data)
        if cfg.split not in SPLITS:
            raise ValueError(f"split={cfg.split!r} is not one of {', '.join(SPLITS)}")
        files = datamodule.prepare((cfg.split,))[cfg.split]  # only this split is listed and checked
        names = image_names(files)  # from the whole split, so a name never depends on max_images
        if cfg.max_images is not None:
            files, names = files[: cfg.max_images], names[: cfg.max_images]
        if not files:
            raise ValueError(f"split={cfg.split!r} of data={cfg.data.source} has no images")
        crop = datamodule.crops.get(cfg.split)  # whole images (or val/test centre crops), never random
        self.dataset = ImageDataset(files, v2.CenterCrop(crop) if crop else None)
        self.names = names
        self.codec = build_codec(cfg).to(self.device).eval()
        self.codec.update(force=True)
        self.attacks = build_attacks(cfg.attack, self.codec)
        self.target, self.mask = self.load_target(files, crop)
        self.adversarial_dir = self.check_load_from()

    def load_target(self, files: list[Path], crop: int | None):
        """The targeted objective's target (and mask), checked against every image's size."""
        target = mask = None
        if self.options["target"]:
            target = read_image(self.options["target"])[None].to(self.device)
            for path in files:
                size = (crop, crop) if crop else image_size(path)
                if tuple(size) != tuple(target.shape[-2:]):
                    raise ValueError(
                        f"attack.target={self.options['target']!r} is {tuple(target.shape[-2:])}, "
                        f"but image {str(path)!r} is {tuple(size)}"
                    )
        if self.options["mask"]:
            mask = read_image(self.options["mask"])[None, :1].to(self.device)
            if target is not None and mask.shape[-2:] != target.shape[-2:]:
                raise ValueError(f"attack.mask={self.options['mask']!r} is not the target's size")
        return target, mask

    def check_load_from(self) -> Path | None:
        folder = self.options["load_from"]
        if not folder:
            return None
        folder = Path(folder)
        if (folder / "adversarial").is_dir():
            folder = folder / "adversarial"
        missing = [n for n in self.names if not (folder / f"{n}.png").is_file()]
        if missing:
            raise FileNotFoundError(
                f"attack.load_from={str(folder)!r} lacks {len(missing)} adversarial image(s), "
                f"e.g. {missing[0]}.png"
            )
        return folder

    def run(self) -> list[dict]:
        curve = []
        for eps, attack in zip(self.budgets, self.attacks, strict=True):
            folder = self.output_dir if len(self.budgets) == 1 else self.output_dir / f"eps_{eps:g}"
            mean = self.run_budget(attack, folder)
            curve.append({"eps": eps, **mean})
        if len(self.budgets) > 1:
            write_json(self.output_dir / "curve.json", curve)
            save_curve(
                self.output_dir / "robustness_curve.png",
                curve,
                f"{type(self.codec).__name__} under {type(self.attacks[0]).__name__} "
                f"(eps {', '.join(f'{e:g}' for e in self.budgets)}), real bitstreams",
            )
            print(f"robustness curve: {self.output_dir / 'robustness_curve.png'}")
        return curve

    def run_budget(self, attack, folder: Path) -> dict:
        results_path = folder / "results.json"
        records = []
        if results_path.is_file():  # a rerun in the same folder skips the images already measured
            previous = json.loads(results_path.read_text())
            if previous.get("attack") != repr(attack):
                raise ValueError(
                    f"{results_path} holds results of {previous.get('attack')}, not of {attack}: "
                    "use another hydra.run.dir"
                )
            records = previous["images"]
        done = {r["image"] for r in records}
        todo = [i for i, name in enumerate(self.names) if name not in done]
        for index in tqdm(todo, desc=f"attack {folder.name}", unit="image", disable=not todo):
            name = self.names[index]
            x = self.dataset[index][None].to(self.device)
            started = time.perf_counter()
            if self.adversarial_dir is not None:
                x_adv = read_image(self.adversarial_dir / f"{name}.png")[None].to(self.device)
                if x_adv.shape != x.shape:
                    raise ValueError(
                        f"{self.adversarial_dir / name}.png is {tuple(x_adv.shape[-2:])}, "
                        f"the source is {tuple(x.shape[-2:])}"
                    )
            else:
                x_adv = attack(x, target=self.target, mask=self.mask)
            record, clean_hat, adv_hat = measure(self.codec, x, x_adv)
            record = {"image": name, **record, "seconds": time.perf_counter() - started}
            save_panel(folder / "panels" / f"{name}.png", name, x, x_adv, clean_hat, adv_hat, record)
            if self.options["save_images"]:
                image = to_uint8(x_adv[0])
                atomic_write(
                    folder / "adversarial" / f"{name}.png",
                    lambda tmp, im=image: iio.imwrite(tmp, im, extension=".png"),
                )
            records.append(record)
            mean = mean_of(records)
            write_json(results_path, {"attack": repr(attack), "images": records, "mean": mean})
            write_csv(folder / "results.csv", [*records, {"image": "mean", **mean}], ("image", *COLUMNS))
        mean = mean_of(records)
        print(f"\n{attack} on {len(records)} image(s), real bitstreams:\n" + format_table(records, mean))
        print(f"results: {results_path}")
        return mean


def evaluate(cfg: DictConfig) -> list[dict]:
    """Run attack.py's evaluation; returns the mean figures of each budget."""
    torch.manual_seed(cfg.seed)
    evaluation = Evaluation(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return evaluation.run()
