"""What the entry points share: running one Hydra job, alone or inside a sweep."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from rnic.io import atomic_write

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def group_wandb_by_sweep(cfg: DictConfig) -> None:
    """In a sweep, every job's W&B run joins one group named after the sweep's folder."""
    wandb = (cfg.get("logger") or {}).get("wandb")
    if wandb is not None and wandb.get("group") is None and in_sweep():
        with open_dict(cfg):
            wandb.group = Path(HydraConfig.get().sweep.dir).name


def run_job(task: Callable[[DictConfig], object], cfg: DictConfig):
    """Run `task(cfg)`. In a sweep, a failing job writes its traceback to `error.txt` in its folder
    and returns None, so that the other jobs still run and keep their results."""
    group_wandb_by_sweep(cfg)
    try:
        return task(cfg)
    except Exception as err:
        if not in_sweep():
            raise
        output_dir = Path(cfg.paths.output_dir)
        atomic_write(output_dir / ERROR_FILE, lambda tmp: tmp.write_text(traceback.format_exc()))
        log.error(
            "job %s failed (%s: %s); traceback in %s",
            HydraConfig.get().job.num,
            type(err).__name__,
            err,
            output_dir / ERROR_FILE,
        )
        return None
