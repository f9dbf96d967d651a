"""Spread of the main job's robust finetuning gain over its equal-compute clean control, across seeds.

Each seed runs the main job (`python train.py`: the shipped middle-rate CPU codec finetuned with the
default method against PGD L-inf 8/255) and its control (the same run with no adversarial examples),
both stopped at the same number of codec passes (`module.max_passes`: the attack's passes count, so
the control takes more optimizer steps), and attacks both with `attack=auto` (L-inf 8/255, more steps
than the main job's own evaluation) on the val photos, real bitstreams. The seed changes the training
crops and every attack's random start. The figures set the margin of
tests/test_adversarial.py::test_adversarial_finetuning_beats_a_clean_control.

    python benchmarks/finetune_gain.py [--seeds 0 1 2] [--passes 300] [--eval-steps 20]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from rnic.config import CONF
from rnic.training import train

QUIET = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "~callbacks.progress_bar",
         "trainer.enable_model_summary=false"]  # fmt: skip
CONTROL = ["method=none"]
KEYS = ("psnr_adv", "vi", "psnr_clean", "bpp_clean")


def compose_config(config_name: str, output_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


def run_pair(root: Path, seed: int, passes: int, eval_steps: int, extra: list[str]) -> dict[str, dict]:
    """The main job and its control at equal compute: {name: robust_eval figures of the final weights}."""
    evaluation = [
        f"robust_eval.attacks.linf.steps={eval_steps}",
        f"robust_eval.attacks.linf.queries={10 * eval_steps}",
        "robust_eval.start=false",
    ]
    figures = {}
    for name, recipe in (("robust", []), ("control", CONTROL)):
        out = root / f"{name}_{seed}"
        overrides = [*QUIET, f"module.max_passes={passes}", f"seed={seed}", *evaluation, *extra, *recipe]
        train(compose_config("train", out, overrides))
        figures[name] = json.loads((out / "final_metrics.json").read_text())["robust_eval"]["linf"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--passes", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=20, help="APGD steps per auto member (Square: 10x)")
    parser.add_argument("--extra", default="", help="more train.py overrides for both runs")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="finetune_gain_"))
    gains = {key: [] for key in KEYS}
    for seed in args.seeds:
        figures = run_pair(root, seed, args.passes, args.eval_steps, shlex.split(args.extra))
        robust, control = figures["robust"], figures["control"]
        for key in KEYS:
            gains[key].append(robust[key] - control[key])
        print(
            f"seed {seed}: attacked PSNR {robust['psnr_adv']:.3f} vs {control['psnr_adv']:.3f} dB, "
            f"VI {robust['vi']:.3f} vs {control['vi']:.3f} dB, clean PSNR {robust['psnr_clean']:.3f} vs "
            f"{control['psnr_clean']:.3f} dB at {robust['bpp_clean']:.4f} vs {control['bpp_clean']:.4f} bpp",
            flush=True,
        )
    print(
        f"\n{args.passes} codec passes each; attack=auto L-inf 8/255, {args.eval_steps} steps; "
        f"seeds {args.seeds}"
    )
    for key, values in gains.items():
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"gain in {key:10s}: mean {statistics.mean(values):+.4f}, std {spread:.4f}, "
              f"min {min(values):+.4f}, max {max(values):+.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
