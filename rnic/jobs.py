"""What the entry points share: running one Hydra job, alone or inside a sweep."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from rnic.io import atomic_write

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
# Errors of configuration and input: rnic's own messages name the key or file, so the user
# sees one line (HYDRA_FULL_ERROR=1 shows the traceback).
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def group_wandb_by_sweep(cfg: DictConfig) -> None:
    """In a sweep, every job's W&B run joins one group named after the sweep's folder."""
    wandb = (cfg.get("logger") or {}).get("wandb")
    if wandb is not None and wandb.get("group") is None and in_sweep():
        with open_dict(cfg):
            wandb.group = Path(HydraConfig.get().sweep.dir).name


def hydra_only(folder: Path) -> bool:
    """Whether `folder` holds nothing but what Hydra writes for every job (its config, its log)."""
    hydra_files = {".hydra", f"{HydraConfig.get().job.name}.log"} if HydraConfig.initialized() else set()
    return folder.is_dir() and all(p.name in hydra_files for p in folder.iterdir())


# Third-party messages a user of rnic cannot act on, repeated by every command.
QUIET_WARNINGS = (
    r"`torch.jit.script` is deprecated",  # CompressAI's entropy models, at import
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own internals
    r"The '\w+_dataloader' does not have many workers",  # rnic chooses its loader processes
)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_third_party() -> None:
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoTips())


def check_paths(cfg: DictConfig) -> None:
    """The files and folders a config names, checked before torch and Lightning load (seconds)."""
    model, attack = cfg.get("model") or {}, cfg.get("attack") or {}
    for key, value in (
        ("ckpt_path", cfg.get("ckpt_path")),
        ("model.weights", model.get("weights")),
        ("attack.target", attack.get("target")),
        ("attack.mask", attack.get("mask")),
    ):
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"{key}={str(value)!r}: no such file")
    if attack.get("load_from") and not Path(attack.load_from).is_dir():
        raise FileNotFoundError(f"attack.load_from={str(attack.load_from)!r}: no such folder")


def run_job(task: str | Callable[[DictConfig], object], cfg: DictConfig):
    """Run `task(cfg)`; `task` may be given as "module:function", imported after `check_paths`.

    In a sweep, a failing job writes its traceback to `error.txt` in its folder and returns None,
    so that the other jobs still run and keep their results. Alone, a configuration or input error
    is printed as one line and exits with status 1, and the run folder is removed if the run never
    wrote anything into it.
    """
    group_wandb_by_sweep(cfg)
    output_dir = Path(cfg.paths.output_dir)
    quiet_third_party()
    try:
        check_paths(cfg)
        if isinstance(task, str):
            module, name = task.split(":")
            task = getattr(importlib.import_module(module), name)
        return task(cfg)
    except Exception as err:
        if in_sweep():
            atomic_write(output_dir / ERROR_FILE, lambda tmp: tmp.write_text(traceback.format_exc()))
            log.error(
                "job %s failed (%s: %s); traceback in %s",
                HydraConfig.get().job.num,
                type(err).__name__,
                err,
                output_dir / ERROR_FILE,
            )
            return None
        if hydra_only(output_dir):
            shutil.rmtree(output_dir, ignore_errors=True)
        if isinstance(err, USER_ERRORS) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        raise
