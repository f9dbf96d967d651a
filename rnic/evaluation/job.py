"""attack.py's job: attack each image of a split, code clean and adversarial images with the real entropy
coder, and record the figures per image and on average, for every budget."""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import torch
from omegaconf import DictConfig
from torchvision.transforms import v2
from tqdm import tqdm

from rnic.attacks.base import LEVEL_TOLERANCE
from rnic.budgets import format_budget
from rnic.classical import FORMATS, ClassicalCodec, to_uint8
from rnic.coding import coder_on, forward_is_decoded
from rnic.config import attack_spec, build, build_attacks, codec_from_config, untrained
from rnic.dashboard import check_attack_loggers, log_attack_run
from rnic.data import SPLITS, ImageDataset, image_size, read_image
from rnic.defenses import build_defenses, defended
from rnic.defenses.smoothing import SmoothedCodec, certified_radii, certify_images
from rnic.evaluation.card import build_card
from rnic.evaluation.console import budget_summary
from rnic.evaluation.pairs import (
    add_classical_reference,
    add_undefended,
    code_pair,
    coding_times,
    ensemble_fields,
)
from rnic.evaluation.panels import save_curve, save_panel
from rnic.evaluation.records import check_key, mean_of, member_table, run_key, write_budget
from rnic.image_sets import image_names
from rnic.io import atomic_write, write_json
from rnic.jobs import write_run_record
from rnic.rate_certificate import noise_stage, rate_certificate

log = logging.getLogger(__name__)


def expected_passes(attack) -> int:
    """About how many codec forward passes an attack makes per batch: its steps or queries, summed over an
    ensemble's members (for the progress bar's ETA, not a promise)."""
    members = getattr(attack, "members", None)
    if members:
        return sum(expected_passes(member) for member in members.values())
    return int(getattr(attack, "queries", None) or getattr(attack, "steps", None) or 1)


@contextmanager
def counting_passes(codec: torch.nn.Module, total: int, what: str, disable: bool = False):
    """A progress bar of the codec's forward passes (the attack's steps and queries) within one batch,
    with its rate and ETA; the run's bar (images, in Mpx) gives the overall ETA."""
    bar = tqdm(total=total, desc=what, unit="pass", leave=False, disable=disable)

    def tick(*_) -> None:  # a forward hook that returns something would replace the codec's output
        bar.update()

    hook = codec.register_forward_hook(tick)
    try:
        yield bar
    finally:
        hook.remove()
        bar.close()


def check_gradient_free(codec: torch.nn.Module, attacks: list) -> None:
    """A classical coder has no gradient: only transferred images and gradient-free attacks apply."""
    if not isinstance(codec, ClassicalCodec):
        return
    for attack in attacks:
        if not attack.gradient_free:
            raise ValueError(
                f"model={codec.format} is a classical coder without a gradient, so {type(attack).__name__} "
                "cannot attack it: use attack_run.load_from=<an attack.py run with "
                "attack_run.save_images=true>, "
                "attack=square or attack=none"
            )


class Evaluation:
    """One attack.py run: every image of a split, for every budget, same-size images in batches."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.output_dir = Path(cfg.paths.output_dir)
        self.options = cfg.attack_run
        _, self.budgets = attack_spec(cfg.attack)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        )
        if int(cfg.batch_size) < 1:
            raise ValueError(f"batch_size={cfg.batch_size} must be >= 1")
        # Everything that can be wrong is found here, before any attack runs.
        self.load_split()
        defenses = build_defenses(cfg.get("defense"))  # a bad defense setting fails here
        self.build_codecs(defenses)
        evaluated = self.defended if self.defended is not None else self.codec
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

    def load_split(self) -> None:
        """The images of the split (the first `max_images`), their unique names and sizes."""
        cfg = self.cfg
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

    def build_codecs(self, defenses: dict) -> None:
        """The codec (refused untrained), the defended codec if any defense, and their coders."""
        cfg = self.cfg
        self.codec = codec_from_config(cfg).to(self.device).eval()
        if untrained(cfg.model, self.codec):
            raise ValueError(
                f"model={cfg.model.codec.get('arch') or cfg.model.codec._target_} has neither "
                "model.weights nor model.pretrained=true: attacking a randomly initialised codec measures "
                "nothing (model.allow_random_init=true to do it anyway)"
            )
        self.codec.update(force=True)
        # Behind a defense, every figure comes from the defended pipeline; the attack goes through it
        # (adaptive) or against the undefended codec (attack_run.adaptive=false).
        self.adaptive = bool(cfg.attack_run.adaptive)
        self.defended = None
        if defenses:
            self.defended = defended(self.codec, defenses, eot_samples=cfg.attack_run.eot_samples).eval()
            for size in sorted(set(map(tuple, self.sizes))):
                self.defended.check_size(size)
        evaluated = self.defended if self.defended is not None else self.codec
        self.coder = coder_on(evaluated, cfg.coding_device)
        self.plain_coder = coder_on(self.codec, cfg.coding_device)

    def check_certify(self) -> list[float]:
        """The input radii of center smoothing's certificate (certify=true) and of the noise encoder's rate
        certificate (certify.rate=true: `self.rate_certificate`, rnic.rate_certificate), refused unless
        the defense is the certificate's and the attack, if any, is an L2 one (what they bound)."""
        settings = self.cfg.get("certify") or {}
        self.rate_certificate = rate_certificate(self.cfg)
        if not settings.get("enabled") and self.rate_certificate is None:
            return []
        budgets = certified_radii(settings, self.attacks)
        if self.rate_certificate is not None:
            noise_stage(self.coder)
            self.rate_budgets = budgets
        if not settings.get("enabled"):
            return []
        if not isinstance(self.defended, SmoothedCodec):
            raise ValueError("certify=true needs defense=center_smoothing (a certificate is the smoothing's)")
        if not forward_is_decoded(self.codec):
            raise ValueError(
                f"certify=true: {type(self.codec).__name__}'s forward is not what its decoder outputs (a "
                "context model): the center and its certificate would not be about the decoded image"
            )
        return budgets

    def check_budget_fits_images(self, attack) -> None:
        """A budget that no image of the split allows (e.g. an L2 radius beyond the largest possible
        perturbation of the smallest image) is refused before the first image."""
        threat = getattr(attack, "threat_model", None)
        if threat is None:
            return
        for size in sorted(set(map(tuple, self.sizes))):
            threat.check(attack.eps, (3, *size))
        if threat.name == "linf" and getattr(attack, "round_8bit", False):
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
                        f"attack_run.target={self.options['target']!r} is {tuple(target.shape[-2:])}, "
                        f"but image {name!r} is {tuple(size)}"
                    )
        if self.options["mask"]:
            mask = read_image(self.options["mask"])[None, :1].to(self.device)
            if target is not None and mask.shape[-2:] != target.shape[-2:]:
                raise ValueError(f"attack_run.mask={self.options['mask']!r} is not the target's size")
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
                f"attack_run.load_from={str(folder)!r} lacks {len(missing)} adversarial image(s), "
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
                f"(eps {', '.join(format_budget(e) for e in self.budgets)}), real bitstreams",
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
        """Attack and measure every image not yet in `folder`'s results (a rerun continues a run); the
        folder's files are rewritten after each batch."""
        todo = self.todo(folder, records)
        pixels = [self.sizes[i][0] * self.sizes[i][1] / 1e6 for i in range(len(self.names))]
        progress = tqdm(
            total=round(sum(pixels[i] for i in todo), 2),
            desc=f"attack {folder.name}",
            unit="Mpx",
            disable=not todo,
        )
        defense = self.defended.names if self.defended is not None else None
        batches = self.batches(todo)
        for number, indices in enumerate(batches, 1):
            what = f"batch {number}/{len(batches)} ({len(indices)} image(s)): codec passes"
            with counting_passes(self.codec, expected_passes(attack), what, disable=not todo):
                batch, images = self.measure_batch(attack, indices)
            self.write_pngs(folder, batch, *images)
            records.extend(batch)
            records.sort(key=lambda r: self.names.index(r["image"]) if r["image"] in self.names else -1)
            write_budget(
                folder,
                key,
                attack,
                records,
                self.names,
                self.card,
                defense,
                self.adaptive,
                bool(self.certify),
            )
            progress.update(round(sum(pixels[i] for i in indices), 2))
        progress.close()
        self.warn_missed_targets(records)
        mean = mean_of(records)
        summary = budget_summary(
            attack, records, mean, member_table(records), defense, self.adaptive, bool(self.certify)
        )
        print(f"{summary}\nresults: {folder / 'results.json'}")
        return mean

    def todo(self, folder: Path, records: list[dict]) -> list[int]:
        """The indices of the images not yet in `folder`'s records."""
        done = {r["image"] for r in records}
        todo = [i for i, name in enumerate(self.names) if name not in done]
        if records and todo:
            print(
                f"resuming {folder}: {len(self.names) - len(todo)} of {len(self.names)} image(s) done, "
                f"{len(todo)} left"
            )
        return todo

    def measure_batch(self, attack, indices: list[int]) -> tuple[list[dict], tuple[torch.Tensor, ...]]:
        """Attack a batch of images and code it for real: one record per image, and the images (source,
        adversarial, both reconstructions)."""
        x = torch.stack([self.dataset[i] for i in indices]).to(self.device)
        started = time.perf_counter()
        x_adv = self.adversarial(attack, indices, x)
        figures, clean_hat, adv_hat = code_pair(self.coder, x, x_adv)
        if self.defended is not None:
            add_undefended(figures, self.plain_coder, x, x_adv, self.adaptive)
        if not isinstance(self.codec, ClassicalCodec):
            add_classical_reference(figures, x)
        if self.certify:
            certify_images(self.defended, x, clean_hat, adv_hat, figures, self.certify)
        if self.rate_certificate is not None:
            self.rate_certificate.certify_images(self.coder, x, x_adv, figures, self.rate_budgets)
        seconds = (time.perf_counter() - started) / len(indices)
        if getattr(getattr(attack, "objective", None), "kind", None) == "rate":
            for row, record in enumerate(figures):
                record.update(coding_times(self.coder, x[row : row + 1], x_adv[row : row + 1]))
        records = []
        for row, index in enumerate(indices):
            record = {"image": self.names[index], **figures[row], "seconds": seconds}
            if self.adversarial_dir is None:
                record.update(ensemble_fields(attack, row))
            records.append(record)
        return records, (x, x_adv, clean_hat, adv_hat)

    def write_pngs(self, folder: Path, records: list[dict], x, x_adv, clean_hat, adv_hat) -> None:
        """Each image's panel, and with attack_run.save_images=true its adversarial image (8-bit PNG)."""
        for row, record in enumerate(records):
            name, rows = record["image"], slice(row, row + 1)
            panel = folder / "panels" / f"{name}.png"
            save_panel(panel, name, x[rows], x_adv[rows], clean_hat[rows], adv_hat[rows], record)
            if self.options["save_images"]:
                image = to_uint8(x_adv[row])
                atomic_write(
                    folder / "adversarial" / f"{name}.png",
                    lambda tmp, im=image: iio.imwrite(tmp, im, extension=".png"),
                )

    def warn_missed_targets(self, records: list[dict]) -> None:
        missed = [r["image"] for r in records if r.get("target_missed_clean") or r.get("target_missed_adv")]
        if missed:
            log.warning(
                "model.target_bpp=%s is below the lowest rate of %s on %d image(s) (%s): coded at quality "
                "%s, above the target (target_missed_* in results.json)",
                self.cfg.model.target_bpp, self.codec.format, len(missed), ", ".join(missed[:3]),
                FORMATS[self.codec.format][2][0],
            )  # fmt: skip


def evaluate_robustness(cfg: DictConfig) -> list[dict]:
    """attack.py's job: attack a split and measure it on real bitstreams; the mean figures per budget."""
    torch.manual_seed(cfg.seed)
    check_attack_loggers(cfg)
    evaluation = Evaluation(cfg)  # every check passes before anything is written
    write_run_record(cfg, Path(cfg.paths.output_dir))
    curve = evaluation.run()
    log_attack_run(cfg, list(zip(evaluation.budgets, evaluation.folders, strict=True)))
    return curve
