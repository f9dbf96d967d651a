"""Attack benchmarks (figures go into the README).

1. Cost of one attack step relative to one bare forward + backward of the codec with respect to
   its input (same quantisation proxy), measured alternately in one run: target <= 1.10x.
2. Vulnerability index (real bitstreams) against gradient evaluations (1 ... 1000) under one threat
   model, input MSE <= 1e-4 in the paper's 16/255 box, for APGD, PGD, the threshold attack, and the
   paper's recipe (threshold attack, 1001 Adam steps), on the same codec and images.
3. `attack=auto` against each of its members alone (same seed): VI and PSNR per image, wall time, and
   whether auto is at least as strong as every member on every image.

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
from rnic.attacks import APGD, PGD, AutoAttack, ThresholdAttack, quantization_proxy
from rnic.codecs import build_codec, load_weights
from rnic.data import SampleImages, read_image
from rnic.evaluation.pairs import code_pair

SMALL_CODEC = ("model=bmshj2018_hyperprior", "model.N=32", "model.M=48")
TRAIN_STEPS = 300


def train_small_codec(
    output_dir: Path, model: tuple[str, ...] = SMALL_CODEC, steps: int = TRAIN_STEPS
) -> Path:
    """Train the codec of train.py's `model` overrides clean from scratch for `steps` steps on the
    sample photos (128 px crops, lr 1e-3): a briefly trained instance. Returns its last checkpoint."""
    from finetune_gain import QUIET, compose_config  # benchmarks/, beside this script

    from rnic.training import train

    overrides = [  # clean from scratch, whatever train.py's main job is
        *model,
        "model.pretrained=false",
        "attack=none",
        "method=none",
        "robust_eval=null",
        "module.max_passes=null",
        "data.patch_size=128",
        "data.max_val_images=1",
        "data.val_crop=192",
        "module.optimizer.lr=1e-3",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        *QUIET,
    ]
    train(compose_config("train", output_dir, overrides))
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
        "APGD mse": APGD(codec, threat="mse", steps=steps, round_8bit=False),
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


def mean_figures(codec, x: torch.Tensor, x_adv: torch.Tensor) -> tuple[float, float]:
    """Mean VI and mean input PSNR over the images, on real bitstreams (undefined VIs skipped)."""
    records = code_pair(codec, x, x_adv)[0]
    vis = [r["vi"] for r in records if r["vi"] is not None]
    return statistics.mean(vis), statistics.mean(r["psnr_in"] for r in records)


def vi_against_steps(codec, x: torch.Tensor, budgets: list[int]) -> float:
    print(f"\n2. VI [dB] (real bitstreams, mean of {x.shape[0]} images) against gradient evaluations,")
    print("   threat: input MSE <= 1e-4 (40 dB) in a 16/255 box; input PSNR of each result in brackets")
    makers = {
        "APGD": lambda n: APGD(codec, threat="mse", steps=n, round_8bit=False),
        "PGD": lambda n: PGD(codec, threat="mse", steps=n, round_8bit=False),
        "threshold": lambda n: ThresholdAttack(codec, eps=1e-4, steps=n, round_8bit=False),
    }
    print(f"   {'evals':>6} " + " ".join(f"{name:>18}" for name in makers))
    for steps in budgets:
        cells = []
        for make in makers.values():
            vi, psnr_in = mean_figures(codec, x, make(steps)(x))
            cells.append(f"{vi:>8.2f} ({psnr_in:5.2f} dB)")
        print(f"   {steps:>6} " + " ".join(f"{c:>18}" for c in cells), flush=True)
    started = time.perf_counter()
    vi, psnr_in = mean_figures(codec, x, ThresholdAttack(codec, eps=1e-4, steps=1001, round_8bit=False)(x))
    wall = time.perf_counter() - started
    print(f"   paper recipe (threshold attack, 1001 steps): VI {vi:.2f} dB ({psnr_in:.2f} dB), {wall:.0f} s")
    return wall


def auto_against_members(codec, x: torch.Tensor, threat: str, recipe_seconds: float) -> None:
    auto = AutoAttack(codec, threat=threat, round_8bit=False)
    started = time.perf_counter()
    x_adv = auto(x)
    wall = time.perf_counter() - started
    report = auto.last_report
    vi, psnr_in = mean_figures(codec, x, x_adv)
    print(f"\n3. attack=auto (threat {threat}, steps {auto.steps}, queries {auto.queries}) "
          f"on {x.shape[0]} images: "
          f"VI {vi:.2f} dB, attacked PSNR {statistics.mean(report['psnr_adv']):.2f} dB, {wall:.0f} s "
          f"({wall / recipe_seconds:.2f}x the paper recipe's 1001 steps)\n"
          f"   attacked PSNR over the images: {rd.spread_text(rd.spread(report['psnr_adv']))}")  # fmt: skip
    print(f"   {'member':<18} {'PSNR per image':>22} {'VI per image':>20} {'seconds':>8}")
    never_better = True
    for name, member in report["members"].items():
        psnr = " ".join(f"{v:6.2f}" for v in member["psnr_adv"])
        vis = " ".join(f"{v:6.2f}" for v in member["vi"])
        print(f"   {name:<18} {psnr:>22} {vis:>20} {member['seconds']:>8.1f}")
        never_better &= all(
            a <= m + 1e-9 for a, m in zip(report["psnr_adv"], member["psnr_adv"], strict=True)
        )
    print(
        f"   winners: {report['winner']}; at least as strong as every member on every image: {never_better}"
    )
    best = min(report["members"], key=lambda n: statistics.mean(report["members"][n]["psnr_adv"]))
    best_psnr = statistics.mean(report["members"][best]["psnr_adv"])
    seconds = report["members"][best]["seconds"]
    auto_psnr = statistics.mean(report["psnr_adv"])
    print(
        f"   best single member: {best} (attacked PSNR {best_psnr:.2f} dB, {seconds:.0f} s); "
        f"auto: {auto_psnr:.2f} dB"
    )


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
    recipe_seconds = vi_against_steps(codec, x, [int(s) for s in args.vi_steps.split(",")])
    auto_against_members(codec, x, "mse", recipe_seconds)


if __name__ == "__main__":
    main()
