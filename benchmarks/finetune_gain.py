"""Spread of adversarial finetuning's gain over a clean control, across seeds (figures go into the README).

From one small base codec (hyperprior N=32 M=48, 300 clean steps on the sample photos), each seed
finetunes twice for the same number of steps, adversarially and clean (the control), and attacks
both on the 4 val photos (192x192 centre crops) with the same attack, on real bitstreams. The
seed changes the training crops, the attack's random starts and the evaluation attack's start.

    python benchmarks/finetune_gain.py [--seeds 0 1 2] [--steps 250] [--adv "attack=linf ..."]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from rnic.config import CONF
from rnic.evaluation import evaluate_robustness
from rnic.training import train

QUIET = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "~callbacks.progress_bar",
         "trainer.enable_model_summary=false"]  # fmt: skip
SMALL = ["model.N=32", "model.M=48", "data.patch_size=128", "data.batch_size=4", "data.val_crop=192"]


def compose_config(config_name: str, output_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument(
        "--adv",
        default="attack=linf attack.eps=0.03137254901960784 attack.alpha=0.00784313725490196 attack.steps=3",
    )
    parser.add_argument("--eval", default="attack=linf attack.eps=0.03137254901960784 attack.steps=10")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="finetune_gain_"))

    base = root / "base"
    base_recipe = ["module.optimizer.lr=1e-3", "trainer.max_steps=300", "trainer.val_check_interval=300",
                   "data.max_val_images=1"]  # fmt: skip
    train(compose_config("train", base, [*SMALL, *QUIET, *base_recipe]))
    weights = base / "checkpoints" / "last.ckpt"
    finetune = [*SMALL, *QUIET, f"model.weights={weights}", "module.optimizer.lr=1e-4",
                f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
                "data.max_val_images=1"]  # fmt: skip
    gains = {"psnr_adv": [], "vi": [], "psnr_clean": []}
    for seed in args.seeds:
        figures = {}
        for name, recipe in (("adversarial", shlex.split(args.adv)), ("control", ["attack=none"])):
            run = root / f"{name}_{seed}"
            train(compose_config("train", run, [*finetune, *recipe, f"seed={seed}", f"attack.seed={seed}"]))
            evaluation = ["model=bmshj2018_hyperprior", "model.N=32", "model.M=48", "data.val_crop=192",
                          f"model.weights={run / 'checkpoints' / 'last.ckpt'}", *shlex.split(args.eval),
                          f"seed={seed}", f"attack.seed={seed}"]  # fmt: skip
            (figures[name],) = evaluate_robustness(
                compose_config("attack", root / f"attack_{name}_{seed}", evaluation)
            )
        for key in gains:
            gains[key].append(figures["adversarial"][key] - figures["control"][key])
        adv, control = figures["adversarial"], figures["control"]
        print(
            f"seed {seed}: attacked PSNR {adv['psnr_adv']:.3f} vs {control['psnr_adv']:.3f} dB, "
            f"VI {adv['vi']:.3f} vs {control['vi']:.3f} dB, "
            f"clean PSNR {adv['psnr_clean']:.3f} vs {control['psnr_clean']:.3f} dB",
            flush=True,
        )
    print(f"\nrecipe: {args.adv}; evaluation: {args.eval}; {args.steps} steps; seeds {args.seeds}")
    for key, values in gains.items():
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"gain in {key:10s}: mean {statistics.mean(values):+.3f} dB, std {spread:.3f} dB, "
              f"min {min(values):+.3f}, max {max(values):+.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
