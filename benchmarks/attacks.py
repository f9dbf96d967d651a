"""Attack benchmarks (figures go into the README).

1. Cost of one attack step relative to one bare forward + backward of the codec with respect to
   its input (same quantisation proxy), measured alternately in one run: target <= 1.10x.
2. Vulnerability index (real bitstreams) against the number of gradient steps, for the threshold
   attack (input MSE <= 1e-4) and L-inf PGD (eps = 0.01, so input MSE <= 1e-4 too), on the same
   codec and images.

    python benchmarks/attacks.py [--weights CKPT --arch bmshj2018_hyperprior --N 32 --M 48]

Without --weights, a small hyperprior codec is first trained for 300 steps on the sample photos.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rnic import rd
from rnic.attacks import PGD, ThresholdAttack, quantization_proxy
from rnic.codecs import build_codec, load_weights
from rnic.data import SampleImages, read_image
from rnic.robustness import measure


def train_small_codec(output_dir: Path) -> Path:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from rnic.training import train

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "model.N=32",
                "model.M=48",
                "data.patch_size=128",
                "data.max_val_images=1",
                "data.val_crop=192",
                "module.optimizer.lr=1e-3",
                "trainer.max_steps=300",
                "trainer.val_check_interval=300",
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                "~callbacks.progress_bar",
            ],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    train(cfg)
    return output_dir / "checkpoints" / "last.ckpt"


def bare_step(codec, x: torch.Tensor) -> None:
    """One forward + backward of the codec with respect to its input, nothing else."""
    x = x.detach().requires_grad_(True)
    with quantization_proxy(codec, "skip"):
        x_hat, _, _ = rd.forward_padded(codec, x)
    (grad,) = torch.autograd.grad(rd.mse(x_hat, x).sum(), x)
    assert grad.abs().max() > 0


def seconds(fn, repeats: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def step_cost(codec, x: torch.Tensor, steps: int, rounds: int) -> None:
    attacks = {
        "PGD linf": PGD(codec, eps=0.01, alpha=0.0025, steps=steps, round_8bit=False),
        "threshold": ThresholdAttack(codec, eps=1e-4, steps=steps, round_8bit=False),
    }
    for attack in attacks.values():  # warm-up
        attack(x)
    bare_step(codec, x)
    ratios = {name: [] for name in attacks}
    bare_times = []
    for _ in range(rounds):  # alternate, so that machine noise hits both alike
        for name, attack in attacks.items():
            bare = seconds(lambda: bare_step(codec, x), repeats=steps)
            per_step = seconds(lambda a=attack: a(x)) / steps
            ratios[name].append(per_step / bare)
            bare_times.append(bare)
    print(f"\n1. Attack step cost, {tuple(x.shape)} on {torch.get_num_threads()} threads, {rounds} rounds")
    print(f"   bare forward+backward w.r.t. the input: {statistics.median(bare_times) * 1e3:.1f} ms")
    for name, values in ratios.items():
        print(f"   {name:<10} step / bare: median {statistics.median(values):.3f}x  (min {min(values):.3f}x)")


def vi_against_steps(codec, x: torch.Tensor, budgets: list[int]) -> None:
    print(f"\n2. VI [dB] (real bitstreams, mean of {x.shape[0]} images) against gradient steps")
    print(f"   {'steps':>6} {'threshold':>10} {'PGD linf':>10} {'thr PSNR_in':>12} {'PGD PSNR_in':>12}")
    for steps in budgets:
        row = []
        for attack in (
            ThresholdAttack(codec, eps=1e-4, steps=steps, round_8bit=False),
            PGD(codec, eps=0.01, alpha=max(0.01 / 4, 0.02 / steps), steps=steps, round_8bit=False),
        ):
            x_adv = attack(x)
            records = [measure(codec, x[i : i + 1], x_adv[i : i + 1])[0] for i in range(x.shape[0])]
            row.append(
                (statistics.mean(r["vi"] for r in records), statistics.mean(r["psnr_in"] for r in records))
            )
        print(f"   {steps:>6} {row[0][0]:>10.2f} {row[1][0]:>10.2f} {row[0][1]:>12.2f} {row[1][1]:>12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--arch", default="bmshj2018_hyperprior")
    parser.add_argument("--N", type=int, default=32)
    parser.add_argument("--M", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--cost-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vi-steps", default="1,3,10,30,100,300,1000")
    args = parser.parse_args()

    weights = args.weights or train_small_codec(Path(tempfile.mkdtemp(prefix="rnic-bench-")))
    codec = load_weights(build_codec(args.arch, N=args.N, M=args.M), weights).eval()
    codec.update(force=True)
    paths = SampleImages().splits()["val"][: args.images]
    x = torch.stack([read_image(p)[:, : args.size, : args.size] for p in paths])

    step_cost(codec, x, args.cost_steps, args.rounds)
    vi_against_steps(codec, x, [int(s) for s in args.vi_steps.split(",")])


if __name__ == "__main__":
    main()
