"""Attack a learned image codec and measure the damage on real bitstreams:
`rnic-attack model=... model.weights=PATH [attack=auto] data=kodak`."""

import hydra
from omegaconf import DictConfig

from rnic.config_groups import CONF
from rnic.jobs import run_job, switch_arguments


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="attack")
def attack(cfg: DictConfig) -> float | None:
    curve = run_job("rnic.evaluation:evaluate_robustness", cfg)
    return None if curve is None else curve[-1]["psnr_adv"]


def main() -> None:
    switch_arguments(("certify",))  # certify=true "certify.eps=[...]"
    attack()
