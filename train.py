"""Train or finetune a learned image codec: `python train.py model=... data=... [attack=...]`."""

import hydra
from omegaconf import DictConfig

from rnic.jobs import run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_job("rnic.training:train", cfg)
    return None if metrics is None else metrics.get(cfg.get("optimized_metric", "val/clean/loss"))


if __name__ == "__main__":
    main()
