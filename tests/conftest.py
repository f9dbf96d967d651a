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

from rnic.config import CONF

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(2)

# A few seconds of training on the sample photos, with every stage (validation with
# real entropy coding, both checkpoints) exercised: a small codec from scratch, clean unless a test
# chooses an attack, without the main job's robust evaluation.
TINY = [
    "model.pretrained=false",
    "model.allow_random_init=true",
    "attack=none",
    "robust_eval=null",
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


def compose_config(
    output_dir: Path, *overrides: str, config_name: str = "train", keep_hydra: bool = False
) -> DictConfig:
    """The real config as Hydra composes it for `python train.py OVERRIDES`, writing under output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        if not keep_hydra:
            del cfg.hydra  # as under @hydra.main, the job's config has no hydra node
    return cfg


def attack_cfg(tmp_path: Path, checkpoint, *overrides: str, eps: float = 0.0157, steps: int = 4):
    """attack.py's config for the session's trained codec (`trained_checkpoint`): PGD L-inf on 2 val crops."""
    return compose_config(
        tmp_path,
        "model=bmshj2018_hyperprior",
        "model.N=32",
        "model.M=48",
        f"model.weights={checkpoint}",
        "data.val_crop=192",
        "max_images=2",
        "attack=linf",
        f"attack.eps={eps}",
        f"attack.steps={steps}",
        *overrides,
        config_name="attack",
    )


def tiny_widths(overrides) -> list[str]:
    """Small codec widths (cheng2020 codecs have only N; ELIC below M=129 needs its own channel groups;
    MLIC++ slices y in parts of at least 32; TCM's attention heads must divide their channels)."""
    if any(o.startswith("model=cheng2020") for o in overrides):
        return ["model.N=16"]
    if "model=elic" in overrides or "model=elic_cpu" in overrides:
        return ["model.N=16", "model.M=32", "model.groups=[4,4,8,16]"]
    if "model=mlicpp" in overrides:
        return ["model.N=16", "model.M=64", "model.slice_num=2"]
    if "model=tcm" in overrides or "model=tcm_cpu" in overrides:
        return [
            "model.N=16", "model.M=40", "model.config=[1,1,1,1,1,1]", "model.head_dim=[8,8,8,8,8,8]",
            "model.hyper_channels=32", "model.hyper_head_dim=8", "model.attention_dim=16",
            "model.attention_head_dim=8", "model.entropy_widths=[32,32]",
        ]  # fmt: skip
    return ["model.N=16", "model.M=24"]


@pytest.fixture
def tiny_cfg(tmp_path):
    """compose(*overrides) -> a tiny training config writing into tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(tmp_path, *TINY, *tiny_widths(overrides), *overrides)

    return make


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A small hyperprior codec (N=32, M=48) trained for 300 steps on the sample photos: a copy, in a
    session folder (runs may write beside it), of tests/data/hyperprior_n32_m48.ckpt, the weights (rnic
    checkpoint without optimizer states) of `train(compose_config(DIR, *TINY, "model.N=32", "model.M=48",
    "data.batch_size=4", "module.optimizer.lr=1e-3", "trainer.max_steps=300",
    "trainer.val_check_interval=300", "trainer.log_every_n_steps=50",
    "callbacks.last_checkpoint.every_n_train_steps=300"))` on CPU (bit-identical from run to run; its
    full config is stored inside)."""
    copy = tmp_path_factory.mktemp("trained") / "last.ckpt"
    copy.write_bytes((ROOT / "tests" / "data" / "hyperprior_n32_m48.ckpt").read_bytes())
    return copy


@pytest.fixture(scope="session")
def trained_codec(trained_checkpoint):
    from rnic.codecs import build_codec, load_weights

    codec = load_weights(build_codec("bmshj2018_hyperprior", N=32, M=48), trained_checkpoint).eval()
    codec.update(force=True)
    return codec


@pytest.fixture(scope="session")
def photos() -> torch.Tensor:
    """Two 192x192 crops of val sample photos."""
    from rnic.data import SampleImages, read_image

    paths = SampleImages().splits()["val"][:2]
    return torch.stack([read_image(p)[:, :192, :192] for p in paths])
