"""Train or finetune a learned image codec: `rnic-train model=... data=... [attack=...]`."""

import hydra
from omegaconf import DictConfig

from rnic.config_groups import CONF
from rnic.jobs import run_job


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_job("rnic.training:train", cfg)
    return None if metrics is None else metrics.get(cfg.get("optimized_metric", "val/clean/loss"))
