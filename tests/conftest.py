"""Shared fixtures: compose the real Hydra configs and run real short trainings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(2)

# A few seconds of training on the sample photos, with every stage (validation with
# real entropy coding, both checkpoints) exercised.
TINY = [
    "data.patch_size=128",
    "data.batch_size=2",
    "data.max_val_images=1",
    "data.val_crop=192",
    "trainer.accelerator=cpu",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "~callbacks.progress_bar",
    "callbacks.last_checkpoint.every_n_train_steps=2",
]


def compose_config(output_dir: Path, *overrides: str, config_name: str = "train") -> DictConfig:
    """The real config as Hydra composes it for `python train.py OVERRIDES`, writing under output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        del cfg.hydra  # as under @hydra.main, the job's config has no hydra node
    return cfg


def tiny_widths(overrides) -> list[str]:
    """Small codec widths (cheng2020 codecs have only N)."""
    if any(o.startswith("model=cheng2020") for o in overrides):
        return ["model.N=16"]
    return ["model.N=16", "model.M=24"]


@pytest.fixture
def tiny_cfg(tmp_path):
    """compose(*overrides) -> a tiny training config writing into tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(tmp_path, *TINY, *tiny_widths(overrides), *overrides)

    return make
