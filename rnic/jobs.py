"""What the entry points share: running one Hydra job, alone or inside a sweep."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rnic.budgets import parse_fractions
from rnic.io import atomic_write, write_text

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
# Errors of configuration and input: rnic's own messages name the key or file, so the user
# sees one line (HYDRA_FULL_ERROR=1 shows the traceback).
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def switch_arguments(keys: tuple[str, ...]) -> None:
    """Let `KEY=true|false` on the command line switch a config node KEY that has an `enabled` field
    (`certify=true "certify.eps=[...]"`): Hydra would otherwise replace the node by the boolean."""
    for index, argument in enumerate(sys.argv[1:], 1):
        key, equals, value = argument.partition("=")
        if equals and key in keys and value.lower() in ("true", "false"):
            sys.argv[index] = f"{key}.enabled={value.lower()}"


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class RunLogHandler(logging.FileHandler):
    """Hydra's job log (`<job>.log` in the run folder), held in memory until the run has passed its
    checks (`write_run_record`): a refused command leaves an existing run's log as it was."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None):
        super().__init__(filename, mode, encoding, delay=True)
        self.pending: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending is None:
            super().emit(record)
        else:
            self.pending.append(record)

    def open_file(self) -> None:
        pending, self.pending = self.pending or [], None
        for record in pending:
            super().emit(record)


def write_run_record(cfg: DictConfig, output_dir: Path) -> None:
    """A run's record, written once every check has passed, so that a refused command writes nothing:
    `config.yaml` (resolved), Hydra's own record in `.hydra/` (a later attempt's, such as a resume, in
    `.hydra/<time>/`; none for a job nested in another, such as train.py's robust_eval), and the job log."""
    write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    job_dir = OmegaConf.select(hydra, "runtime.output_dir", default=None) if hydra is not None else None
    if job_dir is not None and Path(job_dir).resolve() == output_dir.resolve():
        record = output_dir / ".hydra"
        if record.exists():
            record = record / datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        write_text(record / "config.yaml", OmegaConf.to_yaml(cfg))
        write_text(record / "hydra.yaml", OmegaConf.to_yaml({"hydra": OmegaConf.to_container(hydra)}))
        write_text(record / "overrides.yaml", OmegaConf.to_yaml(list(hydra.overrides.task)))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RunLogHandler):
            handler.open_file()


def remove_if_empty(folder: Path) -> None:
    """Remove a run folder that Hydra created for a command that then wrote nothing into it."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


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
    model, options = cfg.get("model") or {}, cfg.get("attack_run") or {}
    for key, value in (
        ("ckpt_path", None if cfg.get("ckpt_path") == "auto" else cfg.get("ckpt_path")),  # run_folder.AUTO
        ("model.weights", model.get("weights")),
        ("attack_run.target", options.get("target")),
        ("attack_run.mask", options.get("mask")),
    ):
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"{key}={str(value)!r}: no such file")
    if options.get("load_from") and not Path(options.load_from).is_dir():
        raise FileNotFoundError(f"attack_run.load_from={str(options.load_from)!r}: no such folder")


def run_job(task: str | Callable[[DictConfig], object], cfg: DictConfig):
    """Run `task(cfg)`; `task` may be given as "module:function", imported after `check_paths`.

    In a sweep, a failing job writes its traceback to `error.txt` in its folder and returns None,
    so that the other jobs still run and keep their results. Alone, a configuration or input error
    is printed as one line and exits with status 1. Nothing is written into the run folder before
    the job's checks pass (`write_run_record`), and a folder that stays empty is removed.
    """
    output_dir = Path(cfg.paths.output_dir)
    quiet_third_party()
    try:
        parse_fractions(cfg)  # attack.eps=8/255
        check_paths(cfg)  # before anything imports torch: a bad path is refused at once
        from rnic.dashboard import name_wandb_run

        name_wandb_run(cfg)
        if isinstance(task, str):
            module, name = task.split(":")
            task = getattr(importlib.import_module(module), name)
        result = task(cfg)
        remove_if_empty(output_dir)
        return result
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
        remove_if_empty(output_dir)
        if isinstance(err, USER_ERRORS) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        raise
