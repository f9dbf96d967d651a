"""Attack a learned image codec and measure the damage on real bitstreams:
`python attack.py model=... model.weights=PATH [attack=auto] data=kodak`."""

import hydra
from omegaconf import DictConfig

from rnic.jobs import run_job, switch_arguments


@hydra.main(version_base="1.3", config_path="conf", config_name="attack")
def main(cfg: DictConfig) -> float | None:
    curve = run_job("rnic.evaluation:evaluate_robustness", cfg)
    return None if curve is None else curve[-1]["psnr_adv"]


if __name__ == "__main__":
    switch_arguments(("certify",))  # certify=true "certify.eps=[...]"
    main()
