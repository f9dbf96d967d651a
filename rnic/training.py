"""`train(cfg)`: build everything from a composed Hydra config, fit, and report."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from rnic import rd
from rnic.attacks import NoAttack
from rnic.callbacks import AtomicCheckpointIO
from rnic.classical import REFERENCES, ClassicalCodec, matched_reference, reference_line
from rnic.coding import compress_decompress, device_of
from rnic.config import build, build_attacks, codec_from_config, config_group, has_weights
from rnic.evaluation.card import build_card, write_card
from rnic.image_sets import image_names, image_set
from rnic.io import write_json
from rnic.jobs import check_paths, write_run_record
from rnic.methods import CleanTraining, TrainingMethod, train_only
from rnic.robust_eval import robust_evaluation
from rnic.run_folder import check_run_folder, command_line_keys, resume_config, resume_in_place

log = logging.getLogger(__name__)

# What the final table shows: (metric key, label, format).
FINAL_TABLE = (
    ("psnr", "PSNR [dB]", "{:.2f}"),
    ("ms_ssim", "MS-SSIM", "{:.4f}"),
    ("bpp", "bpp (estimated)", "{:.4f}"),
    ("bpp_real", "bpp (real bitstream)", "{:.4f}"),
    ("psnr_real", "PSNR decoded [dB]", "{:.2f}"),
    ("loss", "RD loss", "{:.4f}"),
    ("psnr_in", "input PSNR [dB]", "{:.2f}"),
    ("vi", "VI [dB]", "{:.2f}"),
)


def build_adversarial(cfg: DictConfig, codec: torch.nn.Module) -> TrainingMethod | None:
    """The training method of `cfg.method` with the attack of `cfg.attack` (None: clean training), after
    freezing what `method.train` keeps fixed (for every method, the clean control included)."""
    cls = get_class(cfg.method._target_)
    train_only(codec, cfg.method.train)
    attacks = build_attacks(cfg.attack, codec)
    if len(attacks) != 1:
        raise ValueError(f"attack.eps={list(cfg.attack.eps)}: training takes one budget")
    if isinstance(attacks[0], NoAttack) and cls.needs_attack:
        if not cls.clean_without_attack:
            raise ValueError(f"method={cls.name} needs an attack: set attack=linf (or l2, apgd, auto)")
        return None
    return build(cfg.method, attack=attacks[0])


def main_job_defaults() -> bool:
    """Whether the attack is train.yaml's own (the main job's finetuning): neither the command line nor an
    experiment chose one."""
    if not HydraConfig.initialized():
        return False
    choices = HydraConfig.get().runtime.choices
    chosen = any(key == "attack" or key.startswith("attack.") for key in command_line_keys())
    return not chosen and choices.get("experiment") in (None, "null")


def check_starting_weights(cfg: DictConfig) -> DictConfig:
    """Adversarial training of a codec without weights (neither model.weights nor model.pretrained=true) is
    refused unless model.allow_random_init=true; with the main job's attack, not chosen by the user, such a
    codec trains from scratch, clean (`python train.py model.pretrained=false`), without robust_eval."""
    model = cfg.model
    if has_weights(model) or cfg.get("ckpt_path") or model.get("allow_random_init"):
        return cfg
    if cfg.attack.get("_target_") == "rnic.attacks.NoAttack" or issubclass(
        get_class(cfg.method._target_), CleanTraining
    ):
        return cfg
    if main_job_defaults():
        log.info("model.pretrained=false: training from scratch, clean (attack=none, robust_eval=null)")
        none = OmegaConf.merge(config_group("shared")["attack_common"], config_group("attack")["none"])
        none.pop("defaults", None)
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.attack, cfg.robust_eval = none, None
        return cfg
    arch = model.codec.get("arch") or model.codec.get("_target_")
    raise ValueError(
        f"model={arch} has neither model.weights nor model.pretrained=true: adversarial finetuning "
        f"(attack={HydraConfig.get().runtime.choices.get('attack') if HydraConfig.initialized() else 'set'}) "
        "of a codec without weights; attack=none trains it from scratch, model.allow_random_init=true "
        "trains it adversarially anyway"
    )


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def final_table(title: str, columns: dict[str, dict[str, float]], stage: str) -> str:
    """Rows of FINAL_TABLE, one column per (name -> metrics) for the clean and attacked sets."""
    header, cells = [], []
    for name, metrics in columns.items():
        for kind in ("clean", "attacked"):
            if f"{stage}/{kind}/loss" in metrics:
                header.append(f"{name} {kind}".strip())
                cells.append({key: metrics.get(f"{stage}/{kind}/{key}") for key, _, _ in FINAL_TABLE})
    attacked_only = ("psnr_in", "vi")
    rows = [
        (label, key, fmt)
        for key, label, fmt in FINAL_TABLE
        if key not in attacked_only or any(c[key] is not None for c in cells)
    ]
    width = max(len(label) for label, _, _ in rows)
    column = max(12, *(len(h) for h in header))
    lines = [title, f"  {'':<{width}}  " + "  ".join(f"{h:>{column}}" for h in header)]
    for label, key, fmt in rows:
        values = ["n/a" if c[key] is None else fmt.format(c[key]) for c in cells]
        lines.append(f"  {label:<{width}}  " + "  ".join(f"{v:>{column}}" for v in values))
    if any((c.get("vi") or 0) < 0 for c in cells):
        lines.append(f"  ({rd.NEGATIVE_VI})")
    return "\n".join(lines)


def plain_metrics(metrics: dict) -> dict:
    """Metrics as plain floats; a value that is not finite becomes None (JSON null, 'n/a')."""
    return {k: rd.finite_or_none(v) for k, v in metrics.items()}


def check_training_settings(cfg: DictConfig, datamodule, codec: torch.nn.Module) -> None:
    """Settings that would train nothing or train on crops the codec cannot take, refused up front."""
    max_steps = int(cfg.trainer.get("max_steps", -1))
    if max_steps == 0 or max_steps < -1:
        raise ValueError(
            f"trainer.max_steps={max_steps}: a run needs at least one optimizer step (-1: until max_epochs)"
        )
    stride = rd.stride(codec)
    if datamodule.patch_size < stride:
        raise ValueError(
            f"data.patch_size={datamodule.patch_size} is smaller than the codec's stride {stride} "
            f"({cfg.model.codec.get('arch', type(codec).__name__)} downsamples by {stride}): use >= {stride}"
        )


def check_monitored_metrics(cfg: DictConfig, module, datamodule) -> None:
    """A callback that watches a metric the run never logs would fail at the first validation."""
    validates_attacks = module.adversarial is not None and module.adversarial.validate
    for name, entry in (cfg.get("callbacks") or {}).items():
        key = entry.get("monitor") if entry else None
        if not key:
            continue
        split = key.split("/")[1] if key.startswith("monitor/") else None
        if "/attacked/" in key and not validates_attacks:
            raise ValueError(
                f"callbacks.{name}.monitor={key} needs attacked validation: set attack= and "
                "method.validate=true"
            )
        if split is not None and split not in datamodule.monitor:
            raise ValueError(f"callbacks.{name}.monitor={key} needs data.monitor=[{split}]")


def train_batches(datamodule, cfg: DictConfig) -> int:
    """Full training batches per epoch; refuses a split too small for one (it would train nothing)."""
    files = datamodule.prepare()["train"]
    images = len(datamodule.dataset("train"))  # photo crops, plus any synthetic images
    if images < datamodule.batch_size:
        raise ValueError(
            f"data: the train split has {len(files)} usable image(s) x data.train_repeats="
            f"{datamodule.train_repeats}, fewer than data.batch_size={datamodule.batch_size}: "
            "no full batch to train on (lower data.batch_size or raise data.train_repeats)"
        )
    return images // datamodule.batch_size


def finish_loggers(loggers: list, failed: bool) -> None:
    """Close every logger's run, also after a failure: W&B reuses an active run, so a run left
    open would swallow the next job of a sweep."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            if logger._experiment is not None:
                logger.experiment.finish(exit_code=1 if failed else 0)
        else:
            logger.finalize("failed" if failed else "success")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured codec, validate the best checkpoint, and return its val (and test) metrics."""
    started = time.perf_counter()
    check_paths(cfg)
    cfg = resume_in_place(cfg)
    if cfg.get("ckpt_path"):
        cfg = resume_config(cfg)
    cfg = check_starting_weights(cfg)
    output_dir = Path(cfg.paths.output_dir)
    check_run_folder(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build(cfg.data)
    datamodule.prepare()  # lists and checks every image before any training starts
    train_batches(datamodule, cfg)
    codec = codec_from_config(cfg)
    if isinstance(codec, ClassicalCodec):
        raise ValueError(
            f"model={codec.format} is a classical reference coder: attack.py codes it, train.py cannot"
        )
    check_training_settings(cfg, datamodule, codec)
    module = build(cfg.module, codec=codec, adversarial=build_adversarial(cfg, codec))
    check_monitored_metrics(cfg, module, datamodule)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    module.run_config = OmegaConf.to_container(cfg, resolve=False)  # paths resolve anew on resume
    callbacks = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    failed = True
    try:
        if trainer.is_global_zero:
            write_run_record(cfg, output_dir)
        for logger in trainer.loggers:
            logger.log_hyperparams(resolved)
        results, start, best = fit(cfg, trainer, module, datamodule)
        failed = False
    finally:
        finish_loggers(trainer.loggers, failed)
    results["seconds"] = time.perf_counter() - started
    report(results, start, best, output_dir, trainer)
    if trainer.is_global_zero:  # the card repeats final_metrics.json's figures, so that a check can compare
        final = json.loads((output_dir / "final_metrics.json").read_text())
        means = {k: v for k, v in final.items() if k != "start"}
        files = datamodule.prepare(("val",))["val"]
        attack = repr(module.adversarial.attack) if module.adversarial is not None else None
        card = build_card(cfg, "train", means=means, images=len(files), split="val", attack=attack)
        card["data"]["image_set"] = image_set(card["data"]["config"], "val", image_names(files))
        write_card(output_dir, card)
    if cfg.get("robust_eval") and cfg.robust_eval.get("attacks"):
        results["robust_eval"] = robust_evaluation(cfg, output_dir / "checkpoints" / "final.ckpt")
        if trainer.is_global_zero:
            saved = json.loads((output_dir / "final_metrics.json").read_text())
            write_json(output_dir / "final_metrics.json", {**saved, "robust_eval": results["robust_eval"]})
    return results


def merged(per_dataloader: list[dict]) -> dict:
    """One dict of the metrics that validate/test return per dataloader (val and data.monitor's splits)."""
    return {key: value for metrics in per_dataloader for key, value in metrics.items()}


def fit(cfg: DictConfig, trainer: L.Trainer, module, datamodule) -> tuple[dict, dict, str | None]:
    """Validate the starting model, fit, and validate (and test) the best checkpoint."""
    # Lightning's advice to snapshot pre-step weights does not apply: rnic checkpoints hold
    # the weights after the step, like automatic optimisation does.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    start = {}
    if not cfg.get("ckpt_path"):  # the starting model, for the before/after table
        start = plain_metrics(merged(trainer.validate(module, datamodule=datamodule, verbose=False)))
    first_step = trainer.global_step
    fit_started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trainer.global_step == first_step and trainer.global_step < trainer.max_steps:
        raise RuntimeError(
            f"training stopped at step {trainer.global_step} without a single optimizer step "
            f"(trainer.max_steps={trainer.max_steps}); nothing was trained"
        )
    cost = training_cost(module, time.perf_counter() - fit_started)
    if cfg.get("robust_eval") and cfg.robust_eval.get("attacks"):  # the final weights, evaluated later
        trainer.save_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "final.ckpt")
    best = next(
        (
            c.best_model_path
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and c.best_model_path
        ),
        None,
    )
    results = {}
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        if stage == "test" and not (datamodule.eval_test and datamodule.prepare()["test"]):
            continue
        metrics = merged(run(module, datamodule=datamodule, ckpt_path=best, verbose=False))
        results.update(plain_metrics(metrics))
        if stage == "val" and trainer.is_global_zero:  # the weights just validated: best, else final
            cost["reference"] = classical_reference(module, datamodule)
    return {**results, **cost}, start, best


@torch.no_grad()
def classical_reference(module, datamodule) -> dict:
    """The final codec against JPEG and WebP on the val images: each image coded for real, the classical
    coders at the highest quality within that image's learned rate; mean PSNR and bpp of each."""
    module.update_entropy_tables()
    figures = {"learned": {"psnr": [], "bpp": []}} | {name: {"psnr": [], "bpp": []} for name in REFERENCES}
    for batch in datamodule._loader("val", datamodule.val_batch_size, shuffle=False):  # val alone
        x = batch.to(device_of(module.coder))
        x_hat, bpp = compress_decompress(module.coder, x)
        figures["learned"]["psnr"] += rd.psnr(x_hat, x).tolist()
        figures["learned"]["bpp"] += bpp.tolist()
        for name, matched in matched_reference(x, bpp.tolist()).items():
            for key in ("psnr", "bpp"):
                figures[name][key] += matched[key]
    return {
        name: {key: float(np.mean([v for v in values if v is not None])) for key, values in columns.items()}
        for name, columns in figures.items()
    }


def training_cost(module, seconds: float) -> dict:
    """What the training cost (this process; every rank does the same): codec passes, forward passes,
    wall time of the fit, and the training method's own record (a collapse of `fast`)."""
    method = module.adversarial
    cost = {
        "lmbda": module.lmbda,  # the rate point (from model.lmbda, or the quality's lambda)
        "method": "none" if method is None else method.name,
        "passes": module.passes_total,
        "forward_passes": module.forward_passes_total,
        "train_seconds": seconds,
    }
    return {**cost, **(method.record() if method is not None else {})}


@rank_zero_only
def report(
    results: dict[str, float], start: dict[str, float], best: str | None, output_dir: Path, trainer: L.Trainer
) -> None:
    summary = {"checkpoint": best, "step": trainer.global_step, **results, "start": start}
    write_json(output_dir / "final_metrics.json", summary)
    source = f"best checkpoint {best}" if best else "final weights"
    if start:
        val, title = {"start": start, "final": results}, f"\nVal metrics, starting model and {source}:"
    else:
        val, title = {"final": results}, f"\nVal metrics of the resumed run's {source}:"
    print(final_table(title, val, "val"))
    if "test/clean/loss" in results:
        print(final_table("\nTest metrics:", {"final": results}, "test"))
    if "reference" in results:
        reference = results["reference"]
        learned = reference["learned"]
        print(
            f"  learned {learned['psnr']:.2f} dB at {learned['bpp']:.3f} bpp; "
            + reference_line(learned["psnr"], reference)
        )
    passes, steps = results["passes"], trainer.global_step
    print(
        f"  training cost ({results['method']}): {passes:.1f} codec passes (forward + backward, in batches), "
        f"{results['forward_passes']:.1f} forward-only passes, {results['train_seconds']:.0f} s of training"
    )
    if "fast_collapse_step" in results:
        collapse = results["fast_collapse_step"]
        print(
            "  fast: the catastrophic-overfitting guard never fired"
            if collapse is None
            else f"  fast: COLLAPSED (catastrophic overfitting) at step {collapse}; trained on the "
            "configured attack's examples from there on"
        )
    print(f"  {steps} optimizer steps; wall time {results['seconds']:.0f} s; outputs in {output_dir}")
