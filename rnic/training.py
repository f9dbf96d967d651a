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
)


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


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def format_table(title: str, metrics: dict[str, float], stage: str) -> str:
    rows = [
        (label, fmt.format(metrics[f"{stage}/{key}"]))
        for key, label, fmt in FINAL_TABLE
        if f"{stage}/{key}" in metrics
    ]
    width = max(len(label) for label, _ in rows)
    lines = [title] + [f"  {label:<{width}}  {value:>10}" for label, value in rows]
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
    module = build(cfg.module, codec=codec)
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
    report(results, best, output_dir, trainer)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # each multirun job gets its own W&B run
    return results


@rank_zero_only
def report(results: dict[str, float], best: str | None, output_dir: Path, trainer: L.Trainer) -> None:
    write_json(
        output_dir / "final_metrics.json", {"checkpoint": best, "step": trainer.global_step, **results}
    )
    source = f"best checkpoint {best}" if best else "final weights"
    for stage in ("val", "test"):
        if f"{stage}/psnr" in results:
            print(format_table(f"\nFinal {stage} metrics ({source}):", results, stage))
    print(f"  wall time {results['seconds']:.0f} s; outputs in {output_dir}")
