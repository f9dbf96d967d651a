"""Measure latent_clamp's ranges of y on clean training images and store them with the checkpoint:
`python ranges.py model.weights=CKPT [data=...] [+ranges_split=train]`."""

import hydra
from omegaconf import DictConfig

from rnic.jobs import run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="attack")
def main(cfg: DictConfig) -> None:
    run_job("rnic.latent_ranges:measure_ranges", cfg)


if __name__ == "__main__":
    main()
