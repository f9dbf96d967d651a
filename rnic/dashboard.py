"""W&B for both entry points: run and group names from the experiment and the swept keys, and attack.py's
run (per-image table, panels, means as the summary, the model card as an artifact)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from rnic.classical import REFERENCES

# attack.py's per-image table on W&B: the image, then these columns of its records (rnic.evaluation.records).
TABLE_COLUMNS = (
    "psnr_clean", "psnr_adv", "msssim_clean", "msssim_adv", "bpp_clean", "bpp_adv", "vi", "psnr_in",
    *(f"{kind}_{name}" for name in REFERENCES for kind in ("psnr", "bpp")),
)  # fmt: skip
# W&B's limit on a run's display name.
NAME_LENGTH = 128


def experiment_name(cfg: DictConfig) -> str:
    """The experiment preset (`experiment=...`), else the entry point's task (train, attack)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    experiment = choices.get("experiment")
    return experiment if experiment not in (None, "null") else str(cfg.get("task_name", "run"))


def run_names(cfg: DictConfig) -> tuple[str, str | None]:
    """A W&B run's name and group: `<experiment>/<overrides>` (Hydra's `job.override_dirname`: the keys
    set on the command line, swept ones included); in a sweep the group is `<experiment>/<sweep folder>`,
    shared by its jobs."""
    name, group = experiment_name(cfg), None
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        overrides = OmegaConf.select(hydra, "job.override_dirname", default="") or ""
        overrides = re.sub(r"(^|,)experiment=[^,]*", "", overrides).strip(",")
        if overrides:
            name = f"{name}/{overrides}"
        if getattr(hydra.mode, "name", None) == "MULTIRUN":
            group = f"{experiment_name(cfg)}/{Path(hydra.sweep.dir).name}"
    return name[:NAME_LENGTH], group


def name_wandb_run(cfg: DictConfig) -> None:
    """Fill `logger.wandb.name` and `.group` where the config leaves them null."""
    wandb = (cfg.get("logger") or {}).get("wandb")
    if wandb is None:
        return
    name, group = run_names(cfg)
    with open_dict(cfg):
        if wandb.get("name") is None:
            wandb.name = name
        if wandb.get("group") is None and group is not None:
            wandb.group = group


def check_attack_loggers(cfg: DictConfig) -> None:
    """attack.py logs to W&B only (its files are its CSV record)."""
    others = sorted(set(cfg.get("logger") or {}) - {"wandb"})
    if others:
        raise ValueError(f"logger={','.join(others)}: attack.py logs to W&B only (logger=wandb)")


def log_attack_run(cfg: DictConfig, budgets: list[tuple[float, Path]]) -> Path | None:
    """attack.py's W&B run (with `logger=wandb`): per budget folder its per-image table, its panels and its
    means (the run summary; with several budgets under `eps_<eps>/`), and its model card as an artifact.
    Returns the run's local folder; the run is finished before returning."""
    settings = (cfg.get("logger") or {}).get("wandb")
    if settings is None:
        return None
    import wandb

    name, group = run_names(cfg)  # where the entry point has not named the run already
    save_dir = Path(settings.get("save_dir") or cfg.paths.output_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=settings.get("project"),
        name=settings.get("name") or name,
        group=settings.get("group") or group,
        tags=list(settings.get("tags") or []),
        dir=str(save_dir),
        mode="offline" if settings.get("offline", True) else "online",
        job_type="attack",
        config=OmegaConf.to_container(cfg, resolve=True),
        reinit="finish_previous",
    )
    try:
        for index, (eps, folder) in enumerate(budgets):
            prefix = "" if len(budgets) == 1 else f"eps_{eps:g}/"
            results = json.loads((folder / "results.json").read_text())
            rows = [[r["image"], *(r.get(c) for c in TABLE_COLUMNS)] for r in results["images"]]
            panels = [
                wandb.Image(str(folder / "panels" / f"{r['image']}.png"), caption=r["image"])
                for r in results["images"]
                if (folder / "panels" / f"{r['image']}.png").is_file()
            ]
            run.log(
                {
                    f"{prefix}images": wandb.Table(columns=["image", *TABLE_COLUMNS], data=rows),
                    f"{prefix}panels": panels,
                }
            )
            mean = {k: v for k, v in results["mean"].items() if isinstance(v, int | float)}
            run.summary.update({f"{prefix}mean/{k}": v for k, v in mean.items()})
            card = wandb.Artifact(f"card-{run.id}" + (f"-eps{index}" if prefix else ""), "model-card")
            card.add_file(str(folder / "card.json"))
            run.log_artifact(card)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    folder = Path(run.dir).parent
    wandb.teardown()  # the job is done with W&B: a later run in this process starts from its own settings
    return folder
