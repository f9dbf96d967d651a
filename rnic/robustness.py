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
from rnic.attacks import NoAttack, Square, Threat
from rnic.attacks.base import LEVEL_TOLERANCE
from rnic.card import build_card, write_card
from rnic.classical import FORMATS, REFERENCES, ClassicalCodec, matched_reference, reference_line
from rnic.coding import coder_on, compress_decompress, device_of
from rnic.config import attack_spec, build, build_attacks, codec_from_config, file_sha256
from rnic.data import SPLITS, ImageDataset, image_size, read_image
from rnic.defenses import build_defenses, defended
from rnic.io import atomic_write, write_csv, write_json, write_png
from rnic.jobs import write_run_record
from rnic.smoothing import (
    SmoothedCodec,
    certificate_columns,
    certificate_table,
    certified_means,
    certify_images,
)

log = logging.getLogger(__name__)

COLUMNS = (
    "psnr_in", "linf", "psnr_clean", "psnr_adv", "psnr_adv_in", "msssim_clean", "msssim_adv",
    "bpp_clean", "bpp_adv", "bpp_ratio", "vi", "vi_msssim", "seconds",
)  # fmt: skip
# A rate attack (attack.objective.kind=rate) is a denial of service: the real coding time of the clean and
# the adversarial image, median of CODING_REPEATS, in seconds per image.
RATE_COLUMNS = ("encode_s_clean", "decode_s_clean", "encode_s_adv", "decode_s_adv")
CODING_REPEATS = 3
# Behind a defence: the clean figures without it (and, for a non-adaptive attack, its images coded without
# it, i.e. the same attack on the undefended codec), and the clean cost: PSNR lost, bpp added.
DEFENSE_COLUMNS = (
    "psnr_clean_undefended", "bpp_clean_undefended", "psnr_cost", "bpp_cost", "psnr_adv_undefended",
    "vi_undefended",
)  # fmt: skip
# The classical references at each image's clean learned rate (rnic.classical.matched_reference).
REFERENCE_COLUMNS = tuple(f"{kind}_{name}" for name in REFERENCES for kind in ("psnr", "bpp"))
# Data settings that change how images are loaded, not which images or pixels: left out of a run's key.
LOADING_KEYS = (
    "num_workers",
    "cache_images",
    "check_images",
    "batch_size",
    "val_batch_size",
    "train_repeats",
)
# attack.py settings that change where or how fast a run goes, not its figures.
RUN_ONLY_KEYS = ("save_images",)


@torch.no_grad()
def code_pair(
    coder: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor
) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """Real-bitstream figures of a batch of images and their adversarial versions, one record each."""
    clean_hat, bpp_clean = compress_decompress(coder, x)
    choices = {f"{k}_clean": v for k, v in getattr(coder, "last_choice", {}).items()}  # classical coders
    adv_hat, bpp_adv = compress_decompress(coder, x_adv)
    choices.update({f"{k}_adv": v for k, v in getattr(coder, "last_choice", {}).items()})
    columns = {
        "psnr_in": rd.psnr(x_adv, x),
        "linf": (x_adv - x).flatten(1).abs().amax(1) * 255,
        "psnr_clean": rd.psnr(clean_hat, x),
        "psnr_adv": rd.psnr(adv_hat, x),
        "psnr_adv_in": rd.psnr(adv_hat, x_adv),
        "bpp_clean": bpp_clean,
        "bpp_adv": bpp_adv,
        "bpp_ratio": bpp_adv / bpp_clean,  # the rate's blow-up, x-fold
        "vi": rd.vulnerability_index(adv_hat, clean_hat, x_adv, x),
    }
    if rd.has_ms_ssim(x):
        ms_adv, ms_clean = rd.ms_ssim(adv_hat, x), rd.ms_ssim(clean_hat, x)
        columns["msssim_clean"] = ms_clean
        columns["msssim_adv"] = ms_adv
        vi_ms = 10 * torch.log10((1 - rd.ms_ssim(adv_hat, clean_hat)) / (1 - rd.ms_ssim(x_adv, x)))
        columns["vi_msssim"] = vi_ms
    records = []
    for i in range(x.shape[0]):
        record = dict.fromkeys(("msssim_clean", "msssim_adv", "vi_msssim"))
        record.update({key: rd.finite_or_none(value[i]) for key, value in columns.items()})
        record.update({key: values[i] for key, values in choices.items()})
        records.append(record)
    return records, clean_hat, adv_hat


def add_classical_reference(records: list[dict], x: torch.Tensor) -> None:
    """JPEG and WebP on each clean image at the highest quality within its learned clean rate."""
    matched = matched_reference(x.cpu(), [r["bpp_clean"] for r in records])
    for name, figures in matched.items():
        for record, psnr, bpp in zip(records, figures["psnr"], figures["bpp"], strict=True):
            record.update({f"psnr_{name}": psnr, f"bpp_{name}": bpp})


def member_table(records: list[dict]) -> dict[str, dict]:
    """Per ensemble member: images it won, its mean decoded PSNR and VI over the images it ran on,
    and the images where it was skipped (it could not run on this codec)."""
    table: dict[str, dict] = {}
    for record in records:
        for name, figures in (record.get("members") or {}).items():
            row = table.setdefault(name, {"wins": 0, "psnr_adv": [], "vi": [], "skipped": 0})
            if figures.get("psnr_adv") is not None:
                row["psnr_adv"].append(figures["psnr_adv"])
            if figures.get("vi") is not None:
                row["vi"].append(figures["vi"])
            row["skipped"] += bool(figures.get("skipped"))
            row["wins"] += record.get("winner") == name
    return {
        name: {
            "wins": row["wins"],
            "psnr_adv": rd.mean_or_none(row["psnr_adv"]),
            "vi": rd.mean_or_none(row["vi"]),
            "skipped": row["skipped"],
        }
        for name, row in table.items()
    }


def format_members(members: dict[str, dict]) -> str:
    width = max(len(name) for name in members)
    lines = [f"{'member':<{width}}  {'wins':>5}  {'psnr_adv':>9}  {'vi':>7}  skipped"]
    for name, row in members.items():
        lines.append(
            f"{name:<{width}}  {row['wins']:>5}  {cell(row['psnr_adv'], 'psnr'):>9}  "
            f"{cell(row['vi'], 'vi'):>7}  {row['skipped'] or ''}"
        )
    return "\n".join(lines)


def ensemble_fields(attack, row: int) -> dict:
    """An ensemble's winner and every member's decoded figures for image `row` of the last batch."""
    if getattr(attack, "last_report", None) is None:  # an ensemble (rnic.attacks.Ensemble) keeps one
        return {}
    report = attack.image_report(row)
    members = {
        name: {k: rd.finite_or_none(v) for k, v in figures.items()}
        for name, figures in report["members"].items()
    }
    members.update({name: {"skipped": True} for name in report["skipped"]})
    return {"winner": report["winner"], "members": members}


@torch.no_grad()
def coding_times(coder: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> dict:
    """Real encode and decode wall time of one image and its adversarial version (median of repeats)."""
    times = {}
    for kind, image in (("clean", x), ("adv", x_adv)):
        padded, _ = rd.pad(image.to(device_of(coder)), rd.stride(coder))
        encode, decode = [], []
        for _ in range(CODING_REPEATS):
            started = time.perf_counter()
            encoded = coder.compress(padded)
            encode.append(time.perf_counter() - started)
            started = time.perf_counter()
            coder.decompress(encoded["strings"], encoded["shape"])
            decode.append(time.perf_counter() - started)
        times[f"encode_s_{kind}"] = float(np.median(encode))
        times[f"decode_s_{kind}"] = float(np.median(decode))
    return times


def mean_of(records: list[dict]) -> dict:
    means = {}
    optional = (*DEFENSE_COLUMNS, *RATE_COLUMNS, *REFERENCE_COLUMNS, "psnr_adv_vs_clean")
    present = [c for c in optional if any(c in r for r in records)]
    for column in (*COLUMNS, *present):
        means[column] = rd.mean_or_none(r.get(column) for r in records)
    means["images"] = len(records)
    return means


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def save_panel(path: Path, name: str, x, x_adv, clean_hat, adv_hat, record: dict) -> None:
    delta = x_adv - x
    gain = 0.5 / max(float(delta.abs().max()), 1e-8)
    panels = [
        (x, "source"),
        (x_adv, f"adversarial ({_fmt(record['psnr_in'], 'inf')} dB)"),
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


def _fmt(value: float | None, none: str = "n/a") -> str:
    return none if value is None else f"{value:.2f}"


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


def cell(value: float | None, column: str) -> str:
    if value is None:  # null: an unbounded PSNR (identical images) or an undefined VI
        return "inf" if column.startswith("psnr") else "n/a"
    return f"{value:.3f}"


def results_table(records: list[dict], mean: dict) -> str:
    shown = ("psnr_in", "linf", "psnr_clean", "psnr_adv", "bpp_clean", "bpp_adv", "vi", "msssim_adv")
    width = max([len(r["image"]) for r in records] + [5])
    lines = [f"{'image':<{width}} " + " ".join(f"{c:>11}" for c in shown)]
    for row in [*records, {"image": "mean", **mean}]:
        cells = " ".join(f"{cell(row[c], c):>11}" for c in shown)
        lines.append(f"{row['image']:<{width}} {cells}")
    if any((r["vi"] or 0) < 0 for r in records):
        lines.append(f"({rd.NEGATIVE_VI})")
    return "\n".join(lines)


def image_names(paths: list[Path]) -> list[str]:
    """Unique names: file stems, or where stems repeat (Vimeo's im1.png), the path below the
    images' common folder without suffix, '/' -> '_'."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [str(p.relative_to(root).with_suffix("")).replace(os.sep, "_") for p in paths]


def check_gradient_free(codec: torch.nn.Module, attacks: list) -> None:
    """A classical coder has no gradient: only transferred images and gradient-free attacks apply."""
    if not isinstance(codec, ClassicalCodec):
        return
    for attack in attacks:
        if not isinstance(attack, (NoAttack, Square)):
            raise ValueError(
                f"model={codec.format} is a classical coder without a gradient, so {type(attack).__name__} "
                "cannot attack it: use attack.load_from=<an attack.py run with attack.save_images=true>, "
                "attack=square or attack=none"
            )


def run_key(cfg: DictConfig) -> dict:
    """What decides a run's figures: the resolved model, attack, data and split, the seed, and the
    weights file's hash. A rerun into a folder continues it only if its key is the same."""
    key = {name: OmegaConf.to_container(cfg[name], resolve=True) for name in ("model", "attack", "data")}
    for name in LOADING_KEYS:
        key["data"].pop(name, None)
    for name in RUN_ONLY_KEYS:
        key["attack"].pop(name, None)
    key["attack"].pop("eps", None)  # each budget folder's key adds its own eps
    if cfg.get("defense"):
        key["defense"] = OmegaConf.to_container(cfg.defense, resolve=True)
    else:  # how a defence is attacked changes nothing without one
        key["attack"].pop("adaptive", None)
        key["attack"].pop("eot_samples", None)
    if cfg.model.get("target_bpp") is not None:  # a rate target chooses the quality per image
        key["model"]["quality"] = key["model"]["codec"]["quality"] = None
    key.update(split=cfg.split, seed=cfg.seed)
    if cfg.model.get("weights"):
        key["weights_sha256"] = file_sha256(cfg.model.weights)
    for name in ("pretrained_file", "pretrained_sha256"):  # recorded by codec_from_config
        key["model"].pop(name, None)
    if cfg.model.get("pretrained_sha256"):
        key["weights_sha256"] = cfg.model.pretrained_sha256
    return key


def flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for k, v in tree.items():
        flat.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return flat


def check_key(results_path: Path, key: dict) -> list[dict]:
    """The records already in `results_path`, if it belongs to a run with the same key."""
    if not results_path.is_file():
        return []
    previous = json.loads(results_path.read_text())
    old, new = flatten(previous.get("key") or {}), flatten(key)
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    differ.sort(key=lambda k: not k.endswith(("arch", "_target_", "weights_sha256")))  # telling ones first
    if differ:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in differ[:3])
        more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ValueError(
            f"{results_path} holds results of another run ({shown}{more}): "
            "use another hydra.run.dir, or delete that folder"
        )
    return previous["images"]


class Evaluation:
    """One attack.py run: every image of a split, for every budget, same-size images in batches."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.output_dir = Path(cfg.paths.output_dir)
        _, self.options, self.budgets = attack_spec(cfg.attack)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        )
        if int(cfg.batch_size) < 1:
            raise ValueError(f"batch_size={cfg.batch_size} must be >= 1")

        # Everything that can be wrong is found here, before any attack runs.
        if cfg.max_images is not None and int(cfg.max_images) < 1:
            raise ValueError(f"max_images={cfg.max_images} must be >= 1 (null: every image of the split)")
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
        self.sizes = [(crop, crop) if crop else image_size(path) for path in files]
        defenses = build_defenses(cfg.get("defense"))  # a bad defence setting fails here
        self.codec = codec_from_config(cfg).to(self.device).eval()
        untrained = not (cfg.model.get("weights") or cfg.model.get("pretrained"))
        if (
            untrained
            and not isinstance(self.codec, ClassicalCodec)
            and not cfg.model.get("allow_random_init")
        ):
            raise ValueError(
                f"model={cfg.model.codec.get('arch') or cfg.model.codec._target_} has neither "
                "model.weights nor model.pretrained=true: attacking a randomly initialised codec measures "
                "nothing (model.allow_random_init=true to do it anyway)"
            )
        self.codec.update(force=True)
        # Behind a defence, every figure comes from the defended pipeline; the attack goes through it
        # (adaptive) or against the undefended codec (attack.adaptive=false).
        self.adaptive = bool(cfg.attack.get("adaptive", True))
        self.defended = None
        if defenses:
            self.defended = defended(
                self.codec, defenses, eot_samples=cfg.attack.get("eot_samples", 8)
            ).eval()
            for size in sorted(set(map(tuple, self.sizes))):
                self.defended.check_size(size)
        evaluated = self.defended if self.defended is not None else self.codec
        self.coder = coder_on(evaluated, cfg.coding_device)
        self.plain_coder = coder_on(self.codec, cfg.coding_device)
        self.attacks = build_attacks(cfg.attack, evaluated if self.adaptive else self.codec)
        for attack in self.attacks:
            if hasattr(attack, "coding_device"):  # attacks that code (ensembles, Square's real oracle)
                attack.coding_device = cfg.coding_device
            self.check_budget_fits_images(attack)
        self.certify = self.check_certify()
        self.target, self.mask = self.load_target()
        self.adversarial_dir = self.check_load_from()
        if self.adversarial_dir is None:
            check_gradient_free(self.codec, self.attacks)
        self.key = run_key(cfg)
        self.card = build_card(cfg, "attack", means={}, images=0, split=cfg.split, attack=None)
        self.folders = [
            self.output_dir if len(self.budgets) == 1 else self.output_dir / f"eps_{eps:g}"
            for eps in self.budgets
        ]
        self.keys = [{**self.key, "eps": eps} for eps in self.budgets]  # each budget's folder has its own
        self.previous = [
            check_key(folder / "results.json", key)
            for folder, key in zip(self.folders, self.keys, strict=True)
        ]

    def check_certify(self) -> list[float]:
        """The input radii to certify (certify=true), refused unless the codec is center-smoothed and the
        attack, if any, is an L2 one (what the certificate bounds)."""
        settings = self.cfg.get("certify") or {}
        if not settings.get("enabled"):
            return []
        if not isinstance(self.defended, SmoothedCodec):
            raise ValueError("certify=true needs defense=center_smoothing (a certificate is the smoothing's)")
        budgets = [float(eps) for eps in settings.get("eps") or []]
        if not budgets or any(not eps >= 0 for eps in budgets):
            raise ValueError(f"certify.eps={list(settings.get('eps') or [])}: give input radii >= 0 (L2)")
        for attack in self.attacks:
            threat = getattr(attack, "threat", None)
            if threat not in (None, "l2"):
                raise ValueError(
                    f"attack.threat={threat}: the certificate bounds L2 perturbations (certify.eps); attack "
                    "with attack.threat=l2 at the same radius (the empirical figure), or attack=none"
                )
        return budgets

    def check_budget_fits_images(self, attack) -> None:
        """A budget that no image of the split allows (e.g. an L2 radius beyond the largest possible
        perturbation of the smallest image) is refused before the first image."""
        threat = getattr(attack, "threat", None)
        if threat is None:
            return
        for size in sorted(set(map(tuple, self.sizes))):
            Threat(threat).check(attack.eps, (3, *size))
        if threat == "linf" and getattr(attack, "round_8bit", False):
            for eps in torch.as_tensor(attack.eps, dtype=torch.float64).flatten().tolist():
                levels = eps * 255
                kept = math.floor(levels + LEVEL_TOLERANCE)
                if levels - kept > 0.5:  # e.g. 0.0078 for 2/255: 1.989 levels, delivered as 1
                    log.warning(
                        "attack.eps=%s is %.3f/255: delivered as 8-bit samples (attack.round_8bit=true) it "
                        "is a %d/255 attack; write %d/255 as %r",
                        eps, levels, kept, round(levels), round(levels) / 255,
                    )  # fmt: skip

    def load_target(self):
        """The targeted objective's target (and mask), checked against every image's size."""
        target = mask = None
        if self.options["target"]:
            target = read_image(self.options["target"])[None].to(self.device)
            for name, size in zip(self.names, self.sizes, strict=True):
                if tuple(size) != tuple(target.shape[-2:]):
                    raise ValueError(
                        f"attack.target={self.options['target']!r} is {tuple(target.shape[-2:])}, "
                        f"but image {name!r} is {tuple(size)}"
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

    def batches(self, todo: list[int]) -> list[list[int]]:
        """Indices of same-size images, at most `batch_size` per batch, in split order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index in todo:
            groups.setdefault(tuple(self.sizes[index]), []).append(index)
        size = int(self.cfg.batch_size)
        batches = [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
        return sorted(batches, key=lambda b: b[0])

    def run(self) -> list[dict]:
        curve = []
        for eps, attack, folder, key, previous in zip(
            self.budgets, self.attacks, self.folders, self.keys, self.previous, strict=True
        ):
            mean = self.run_budget(attack, folder, key, previous)
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

    def adversarial(self, attack, indices: list[int], x: torch.Tensor) -> torch.Tensor:
        if self.adversarial_dir is None:
            target = None if self.target is None else self.target.expand(len(indices), -1, -1, -1)
            return attack(x, target=target, mask=self.mask)
        images = []
        for index, source in zip(indices, x, strict=True):
            path = self.adversarial_dir / f"{self.names[index]}.png"
            image = read_image(path).to(self.device)
            if image.shape != source.shape:
                raise ValueError(
                    f"{path} is {tuple(image.shape[-2:])}, the source is {tuple(source.shape[-2:])}"
                )
            images.append(image)
        return torch.stack(images)

    def run_budget(self, attack, folder: Path, key: dict, records: list[dict]) -> dict:
        """Attack and measure every image not yet in `folder`'s results (a rerun continues a run)."""
        results_path = folder / "results.json"
        done = {r["image"] for r in records}
        todo = [i for i, name in enumerate(self.names) if name not in done]
        if records and todo:
            print(
                f"resuming {folder}: {len(self.names) - len(todo)} of {len(self.names)} image(s) done, "
                f"{len(todo)} left"
            )
        pixels = [self.sizes[i][0] * self.sizes[i][1] / 1e6 for i in range(len(self.names))]
        progress = tqdm(
            total=round(sum(pixels[i] for i in todo), 2),
            desc=f"attack {folder.name}",
            unit="Mpx",
            disable=not todo,
        )
        for indices in self.batches(todo):
            x = torch.stack([self.dataset[i] for i in indices]).to(self.device)
            started = time.perf_counter()
            x_adv = self.adversarial(attack, indices, x)
            batch_records, clean_hat, adv_hat = code_pair(self.coder, x, x_adv)
            if self.defended is not None:
                self.add_undefended(batch_records, x, x_adv)
            if not isinstance(self.codec, ClassicalCodec):
                add_classical_reference(batch_records, x)
            if self.certify:
                certify_images(self.defended, x, clean_hat, adv_hat, batch_records, self.certify)
            seconds = (time.perf_counter() - started) / len(indices)
            if getattr(getattr(attack, "objective", None), "kind", None) == "rate":
                for row, record in enumerate(batch_records):
                    record.update(coding_times(self.coder, x[row : row + 1], x_adv[row : row + 1]))
            for row, index in enumerate(indices):
                name = self.names[index]
                record = {"image": name, **batch_records[row], "seconds": seconds}
                if self.adversarial_dir is None:
                    record.update(ensemble_fields(attack, row))
                rows = slice(row, row + 1)
                save_panel(
                    folder / "panels" / f"{name}.png",
                    name,
                    x[rows],
                    x_adv[rows],
                    clean_hat[rows],
                    adv_hat[rows],
                    record,
                )
                if self.options["save_images"]:
                    image = to_uint8(x_adv[row])
                    atomic_write(
                        folder / "adversarial" / f"{name}.png",
                        lambda tmp, im=image: iio.imwrite(tmp, im, extension=".png"),
                    )
                records.append(record)
            records.sort(key=lambda r: self.names.index(r["image"]) if r["image"] in self.names else -1)
            mean = mean_of(records)
            status = self.status(records)
            results = {"key": key, "attack": repr(attack), **status, "images": records, "mean": mean}
            if self.defended is not None:
                results.update(defense=self.defended.names, adaptive=self.adaptive)
            members = member_table(records)
            if members:
                results["members"] = members
            certified = {"certified": certified_means(records)} if self.certify else {}
            write_json(results_path, {**results, **certified})
            data = {**self.card["data"], "images": len(records), "images_planned": status["images_planned"]}
            write_card(folder, {**self.card, "attack": repr(attack), "complete": status["complete"],
                       "data": data, "means": mean, **certified})  # fmt: skip
            columns = ("image", *COLUMNS, *(DEFENSE_COLUMNS if self.defended is not None else ()))
            columns = (*columns, *(c for c in (*RATE_COLUMNS, *REFERENCE_COLUMNS) if c in mean))
            columns = (*columns, *(("winner",) if members else ()))
            flat = [{**r, **certificate_columns(r)} for r in records]
            columns = (*columns, *(certificate_columns(records[0]) if self.certify else ()))
            write_csv(folder / "results.csv", [*flat, {"image": "mean", **mean}], columns)
            progress.update(round(sum(pixels[i] for i in indices), 2))
        progress.close()
        missed = [r["image"] for r in records if r.get("target_missed_clean") or r.get("target_missed_adv")]
        if missed:
            log.warning(
                "model.target_bpp=%s is below the lowest rate of %s on %d image(s) (%s): coded at quality "
                "%s, above the target (target_missed_* in results.json)",
                self.cfg.model.target_bpp, self.codec.format, len(missed), ", ".join(missed[:3]),
                FORMATS[self.codec.format][2][0],
            )  # fmt: skip
        mean = mean_of(records)
        print(f"\n{attack} on {len(records)} image(s), real bitstreams:\n" + results_table(records, mean))
        if mean.get("psnr_jpeg") is not None:
            figures = {n: {"psnr": mean[f"psnr_{n}"], "bpp": mean[f"bpp_{n}"]} for n in REFERENCES}
            print(reference_line(mean["psnr_clean"], figures))
        members = member_table(records)
        if members:
            print("\nensemble members (decoded figures; wins: images where the member was the worst case):")
            print(format_members(members))
        if self.defended is not None:
            how = "adaptive (through the defence)" if self.adaptive else "non-adaptive (undefended codec)"
            print(
                f"\ndefense={'+'.join(self.defended.names)}, attack {how}: clean cost "
                f"{cell(mean['psnr_cost'], 'cost')} dB PSNR, {cell(mean['bpp_cost'], 'cost')} bpp"
                + (
                    f"; without the defence the attacked PSNR is {cell(mean['psnr_adv_undefended'], 'psnr')}"
                    if mean.get("psnr_adv_undefended") is not None
                    else ""
                )
            )
        if self.certify:
            print(certificate_table(certified_means(records)))
        print(f"results: {results_path}")
        return mean

    def status(self, records: list[dict]) -> dict:
        """How far a budget folder's run got: a killed run's record says it is unfinished."""
        done = sum(r["image"] in self.names for r in records)
        return {"images_planned": len(self.names), "complete": done == len(self.names)}

    @torch.no_grad()
    def add_undefended(self, records: list[dict], x: torch.Tensor, x_adv: torch.Tensor) -> None:
        """The figures without the defence, per record: the clean cost, and for a non-adaptive attack
        (computed against the undefended codec) what its images do to that codec."""
        plain_hat, plain_bpp = compress_decompress(self.plain_coder, x)
        columns = {"psnr_clean_undefended": rd.psnr(plain_hat, x), "bpp_clean_undefended": plain_bpp}
        if not self.adaptive:
            adv_hat = compress_decompress(self.plain_coder, x_adv)[0]
            columns["psnr_adv_undefended"] = rd.psnr(adv_hat, x)
            columns["vi_undefended"] = rd.vulnerability_index(adv_hat, plain_hat, x_adv, x)
        for i, record in enumerate(records):
            record.update({k: rd.finite_or_none(v[i]) for k, v in columns.items()})
            clean, plain = record["psnr_clean"], record["psnr_clean_undefended"]
            record["psnr_cost"] = None if clean is None or plain is None else plain - clean
            record["bpp_cost"] = record["bpp_clean"] - record["bpp_clean_undefended"]


def evaluate_robustness(cfg: DictConfig) -> list[dict]:
    """attack.py's job: attack a split and measure it on real bitstreams; the mean figures per budget."""
    torch.manual_seed(cfg.seed)
    evaluation = Evaluation(cfg)  # every check passes before anything is written
    write_run_record(cfg, Path(cfg.paths.output_dir))
    return evaluation.run()
