"""A training run's folder: a fresh start never writes over another run, and a resumed run continues with
the config it was started with (what the command line sets on top)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from rnic.codecs import read_checkpoint

log = logging.getLogger(__name__)

# ckpt_path=auto: resume from the run folder's own last checkpoint, if an earlier attempt left one.
AUTO = "auto"
LAST_CHECKPOINT = ("checkpoints", "last.ckpt")
# What a training run writes into its folder (Hydra's record and log included).
RUN_OUTPUTS = ("checkpoints", "csv", "tensorboard", "wandb", "robust_eval", "final_metrics.json", "card.json",
               "config.yaml", ".hydra", "train.log")  # fmt: skip
# What a resumed run always takes from the command line rather than from the checkpoint's config.
RUN_KEYS = ("paths", "ckpt_path", "hydra")
# ... and also from a run folder's config.yaml, whose paths were resolved to the old folder.
RESOLVED_RUN_KEYS = (*RUN_KEYS, "callbacks", "logger", "trainer.default_root_dir")


def launched_by_submitit() -> bool:
    """A job of a submitit launcher (hydra/launcher=slurm|slurm_ddp|submitit_local|submitit_slurm): it may be
    requeued after a timeout or a preemption (the launcher's max_num_timeout) and rerun in the same folder."""
    if not HydraConfig.initialized():
        return False
    launcher = HydraConfig.get().get("launcher") or {}
    return "hydra_submitit_launcher" in str(launcher.get("_target_", ""))


def resume_in_place(cfg: DictConfig) -> DictConfig:
    """`ckpt_path=auto`, and `ckpt_path=null` in a job that submitit launched: the run folder's own
    `checkpoints/last.ckpt` if an earlier attempt of the run left one (a resume, said in the log), else a
    fresh start, refused as any other if the folder holds another run's outputs."""
    ckpt = cfg.get("ckpt_path")
    if ckpt != AUTO and (ckpt is not None or not launched_by_submitit()):
        return cfg
    last = Path(cfg.paths.output_dir).joinpath(*LAST_CHECKPOINT)
    with open_dict(cfg):
        cfg.ckpt_path = str(last) if last.is_file() else None
    if last.is_file():
        why = "ckpt_path=auto" if ckpt == AUTO else "a job that submitit started again in its folder"
        log.info("resuming from %s (%s)", last, why)
    return cfg


def check_run_folder(cfg: DictConfig, output_dir: Path) -> None:
    """A fresh start never writes over another run: a folder holding a run's outputs takes a resume of its
    own run (`ckpt_path=` inside it), or `overwrite=true`, which deletes those outputs first (and nothing
    else the folder holds)."""
    outputs = [output_dir / name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if rank_zero_only.rank != 0 or not outputs:
        return  # DDP's other ranks run in rank 0's folder
    ckpt = cfg.get("ckpt_path")
    if ckpt and Path(ckpt).resolve().is_relative_to(output_dir.resolve()):
        return
    if not cfg.get("overwrite"):
        what = "a resume of another run" if ckpt else "a fresh start"
        raise ValueError(
            f"hydra.run.dir={str(output_dir)!r} holds a run already ({what} would write over it): resume it "
            f"with ckpt_path={output_dir.joinpath(*LAST_CHECKPOINT)} (or ckpt_path=auto), choose another "
            "hydra.run.dir, "
            "or start over in it with overwrite=true (deletes its checkpoints and metrics)"
        )
    for path in outputs:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def saved_config(ckpt_path: str) -> tuple[dict | None, tuple[str, ...]]:
    """The config of the run that wrote `ckpt_path` and the keys to take from the command line:
    the unresolved config stored in the checkpoint, else the run folder's (resolved) config.yaml."""
    ckpt = read_checkpoint(ckpt_path, "ckpt_path")
    stored = (ckpt.get("rnic") or {}).get("config")
    if stored:
        return stored, RUN_KEYS
    folder_config = Path(ckpt_path).resolve().parent.parent / "config.yaml"
    if folder_config.is_file():
        return OmegaConf.to_container(OmegaConf.load(folder_config)), RESOLVED_RUN_KEYS
    return None, ()


def command_line_keys() -> list[str]:
    """The config keys (or groups) the user set on the command line."""
    if not HydraConfig.initialized():
        return []
    keys = []
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.append(key.split("@", 1)[0])
    return keys


def resume_config(cfg: DictConfig) -> DictConfig:
    """For `ckpt_path=...`: the run's saved config, with what the command line set on top.

    A resumed run needs no repetition of the original overrides (widths, data, attack); an
    override that changes the codec's architecture is refused in one line.
    """
    saved, run_keys = saved_config(cfg.ckpt_path)
    if saved is None:
        return cfg
    merged = OmegaConf.create(saved)
    with open_dict(merged):
        for key in [*command_line_keys(), *run_keys]:
            if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
                continue
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
        if "weights" not in command_line_keys() and "model.weights" not in command_line_keys():
            merged.model.weights = None  # the checkpoint holds the weights; the file may be gone
    before = OmegaConf.to_container(OmegaConf.create(saved).model.codec, resolve=True)
    after = OmegaConf.to_container(merged.model.codec, resolve=True)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        diffs = ", ".join(f"model.codec.{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed)
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path!r} holds another architecture than the command line asks for "
            f"({diffs}); drop those overrides to resume"
        )
    return merged
