"""`train(cfg)`: build everything from a composed Hydra config, fit, and report."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from rnic.adversarial import AdversarialMixing
from rnic.attacks import NoAttack
from rnic.codecs import load_weights
from rnic.io import AtomicCheckpointIO, write_json

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
# Keys of an attack config that configure attack.py's run, not the attack.
ATTACK_RUN_OPTIONS = ("save_images", "load_from", "target", "mask")


def build(config: DictConfig, **kwargs):
    """Hydra's instantiate, re-raising a constructor's own error (which names the bad key) unwrapped."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise err.__cause__ from None
        raise


def build_codec(cfg: DictConfig) -> torch.nn.Module:
    """The codec of `cfg.model`, with `model.weights` loaded when given."""
    codec = build(cfg.model.codec)
    if cfg.model.get("weights"):
        load_weights(codec, cfg.model.weights)
    return codec


def attack_spec(attack: DictConfig) -> tuple[dict, dict, list]:
    """Split an `attack=` config into (attack constructor config, run options, budgets)."""
    spec = OmegaConf.to_container(attack, resolve=True)
    options = {key: spec.pop(key, None) for key in ATTACK_RUN_OPTIONS}
    eps = spec.pop("eps", None)
    return spec, options, list(eps) if isinstance(eps, list) else [eps]


def build_attacks(attack: DictConfig, codec: torch.nn.Module) -> list:
    """One attack on `codec` per budget of `attack.eps`."""
    spec, _, budgets = attack_spec(attack)
    make = build(OmegaConf.create(spec))
    return [make(codec, **({} if eps is None else {"eps": eps})) for eps in budgets]


def build_adversarial(cfg: DictConfig, codec: torch.nn.Module) -> AdversarialMixing | None:
    """The adversarial mixing of `cfg.adv` with the attack of `cfg.attack` (None for attack=none)."""
    attacks = build_attacks(cfg.attack, codec)
    if len(attacks) != 1:
        raise ValueError(f"attack.eps={list(cfg.attack.eps)}: training takes one budget")
    if isinstance(attacks[0], NoAttack):
        return None
    return build(cfg.adv)(attacks[0])


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def format_table(title: str, columns: dict[str, dict[str, float]], stage: str) -> str:
    """Rows of FINAL_TABLE, one column per (name -> metrics) for the clean and attacked sets."""
    header, cells = [], []
    for name, metrics in columns.items():
        for kind in ("clean", "attacked"):
            if f"{stage}/{kind}/loss" in metrics:
                header.append(f"{name} {kind}".strip())
                cells.append({key: metrics.get(f"{stage}/{kind}/{key}") for key, _, _ in FINAL_TABLE})
    rows = [(label, key, fmt) for key, label, fmt in FINAL_TABLE if any(c[key] is not None for c in cells)]
    width = max(len(label) for label, _, _ in rows)
    column = max(12, *(len(h) for h in header))
    lines = [title, f"  {'':<{width}}  " + "  ".join(f"{h:>{column}}" for h in header)]
    for label, key, fmt in rows:
        values = ["" if c[key] is None else fmt.format(c[key]) for c in cells]
        lines.append(f"  {label:<{width}}  " + "  ".join(f"{v:>{column}}" for v in values))
    return "\n".join(lines)


@rank_zero_only
def save_config(cfg: DictConfig, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def check_resume(ckpt_path: str | None) -> None:
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no such checkpoint")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured codec, validate the best checkpoint, and return its val (and test) metrics."""
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    check_resume(cfg.get("ckpt_path"))
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build(cfg.data)
    datamodule.prepare()  # lists and checks every image before any training starts
    codec = build_codec(cfg)
    module = build(cfg.module, codec=codec, adversarial=build_adversarial(cfg, codec))
    callbacks = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    save_config(cfg, output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)

    # Lightning's advice to snapshot pre-step weights does not apply: rnic checkpoints hold
    # the weights after the step, like automatic optimisation does.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    start = {}
    if not cfg.get("ckpt_path"):  # the starting model, for the before/after table
        (start,) = trainer.validate(module, datamodule=datamodule, verbose=False)
        start = {k: float(v) for k, v in start.items()}
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

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
        if stage == "test" and not datamodule.prepare()["test"]:
            continue
        (metrics,) = run(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        results.update({k: float(v) for k, v in metrics.items()})
    results["seconds"] = time.perf_counter() - started
    report(results, start, best, output_dir, trainer)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # each multirun job gets its own W&B run
    return results


@rank_zero_only
def report(
    results: dict[str, float], start: dict[str, float], best: str | None, output_dir: Path, trainer: L.Trainer
) -> None:
    summary = {"checkpoint": best, "step": trainer.global_step, **results, "start": start}
    write_json(output_dir / "final_metrics.json", summary)
    source = f"best checkpoint {best}" if best else "final weights"
    val = {"start": start, "final": results} if start else {"final": results}
    print(format_table(f"\nVal metrics, starting model and {source}:", val, "val"))
    if "test/clean/loss" in results:
        print(format_table("\nTest metrics:", {"final": results}, "test"))
    print(f"  wall time {results['seconds']:.0f} s; outputs in {output_dir}")
