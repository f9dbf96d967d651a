"""Adversarial finetuning step cost (figures go into the README).

Per training step, at equal batch: an adversarial step (half the batch replaced by PGD-L-inf
examples, `--attack-steps` gradient steps) against a clean step, each run both through rnic's
LightningModule + Trainer and as the same computation written as a plain PyTorch loop (same codec,
attack, optimizers, clipping). Each configuration runs in its own process (peak memory is per
configuration); rounds alternate so that machine noise hits all alike.

    python benchmarks/adversarial_step.py [--steps 30 --rounds 3 --batch 8 --size 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from rnic import rd
from rnic.attacks import PGD
from rnic.codecs import build_codec
from rnic.methods import MixTraining
from rnic.module import CodecModule

CONFIGS = [(adv, runner) for adv in (False, True) for runner in ("lightning", "plain")]


class StepTimer(L.Callback):
    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.starts.append(time.perf_counter())


def make(args, adversarial: bool):
    torch.manual_seed(0)
    codec = build_codec("bmshj2018_hyperprior", N=args.N, M=args.M)
    mixing = None
    if adversarial:
        mixing = MixTraining(PGD(codec, eps=4 / 255, alpha=1 / 255, steps=args.attack_steps), ratio=0.5)
    images = torch.rand(args.batch * (args.steps + 1), 3, args.size, args.size)
    return codec, mixing, images


def run_lightning(args, adversarial: bool) -> list[float]:
    codec, mixing, images = make(args, adversarial)
    module = CodecModule(codec, lmbda=0.0067, scheduler=None, adversarial=mixing)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(
        module,
        DataLoader(
            TensorDataset(images), batch_size=args.batch, collate_fn=lambda b: torch.stack([t[0] for t in b])
        ),
    )
    return [b - a for a, b in zip(timer.starts, timer.starts[1:], strict=False)]


def run_plain(args, adversarial: bool) -> list[float]:
    codec, mixing, images = make(args, adversarial)
    main = [p for n, p in codec.named_parameters() if not n.endswith("quantiles")]
    aux = [p for n, p in codec.named_parameters() if n.endswith("quantiles")]
    optimizer, aux_optimizer = torch.optim.Adam(main, lr=1e-4), torch.optim.Adam(aux, lr=1e-3)
    codec.train()
    starts = []
    for step, x in enumerate(images.split(args.batch)[: args.steps]):
        starts.append(time.perf_counter())
        inputs, targets = mixing.mix(x, step) if mixing else (x, x)
        x_hat, likelihoods, num_pixels = rd.forward_padded(codec, inputs)
        loss = rd.rate_distortion(x_hat, likelihoods, targets, 0.0067, "mse", num_pixels)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        optimizer.step()
        aux_optimizer.zero_grad()
        codec.aux_loss().backward()
        aux_optimizer.step()
    starts.append(time.perf_counter())
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]


def worker(args) -> None:
    adversarial, runner = CONFIGS[args.worker]
    times = (run_lightning if runner == "lightning" else run_plain)(args, adversarial)
    steady = times[3:]  # skip warm-up steps
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"step": statistics.median(steady), "peak_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--M", type=int, default=96)
    parser.add_argument("--attack-steps", type=int, default=3)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args)

    results = {config: [] for config in CONFIGS}
    for _ in range(args.rounds):
        for index, config in enumerate(CONFIGS):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", str(index), *sys.argv[1:]],
                capture_output=True,
                text=True,
                check=True,
            )
            results[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
    step = {c: statistics.median(r["step"] for r in rs) for c, rs in results.items()}
    peak = {c: max(r["peak_mib"] for r in rs) for c, rs in results.items()}
    setup = f"batch {args.batch} x {args.size}^2, hyperprior N={args.N} M={args.M}"
    attack = f"PGD {args.attack_steps} steps on half the batch"
    print(
        f"{setup}, {attack}, {torch.get_num_threads()} threads, median of {args.rounds} x {args.steps} steps"
    )
    print(f"{'':<22}{'s/step':>9}{'images/s':>10}{'peak MiB':>10}")
    for (adversarial, runner), seconds in step.items():
        name = f"{'adversarial' if adversarial else 'clean'} {runner}"
        print(f"{name:<22}{seconds:>9.3f}{args.batch / seconds:>10.1f}{peak[(adversarial, runner)]:>10.0f}")
    print(
        f"adversarial / clean step (Lightning): {step[(True, 'lightning')] / step[(False, 'lightning')]:.2f}x"
    )
    for adversarial in (False, True):
        ratio = step[(adversarial, "lightning")] / step[(adversarial, "plain")]
        print(f"framework overhead, {'adversarial' if adversarial else 'clean'}: {100 * (ratio - 1):+.1f}%")


if __name__ == "__main__":
    main()
