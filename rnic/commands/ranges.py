"""Measure latent_clamp's ranges of y on clean training images and store them with the checkpoint:
`rnic-ranges model.weights=CKPT [data=...] [+ranges_split=train]`."""

import hydra
from omegaconf import DictConfig

from rnic.config_groups import CONF
from rnic.jobs import run_job


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="attack")
def main(cfg: DictConfig) -> None:
    run_job("rnic.defenses.latent:measure_ranges", cfg)
