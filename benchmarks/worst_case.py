"""Which attack is the worst case, codec by codec: every attack rnic ships, at its default settings and at
10x its steps, and the paper's recipe (the threshold attack as Chen & Ma's code runs it, 1000 steps), under
two threat models (input MSE <= 1e-4 in the 16/255 box; L-inf 4/255), on real bitstreams with 8-bit delivery.

Per codec and threat: VI and attacked PSNR (against the source) of each attack, means over the images, the
wall time measured side by side in this one run, and which attack wins by VI and by attacked PSNR (and by
how much over the runner-up).

    python benchmarks/worst_case.py [--codecs shipped-q1 shipped-q2 shipped-q3 small] [--images 2 --size 256]
        [--scale 1.0] [--x10 auto apgd pgd square] [--threats mse linf] [--train-steps 300] [--workdir DIR]

`shipped-q<k>`: rnic's shipped CPU codec at quality k; `small`: a small hyperprior (N=32, M=48) trained
here; `PATH=arch:N:M`: your own weights; "model=... KEY=VALUE ...": attack.py's model overrides, e.g.
"model=tcm_cpu model.quality=2" (shipped weights) or "model=cheng2020_checkerboard model.N=32" (no weights
named: trained here as `small` is). Trained here: clean from scratch on the sample photos for
--train-steps steps (300). `--scale` multiplies every attack's steps and queries (0.1 for a quick look; the
defaults and the 10x column keep their ratio); `--x10` names the attacks that also run at 10x their steps
(all by default; `--x10` alone: none).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import re
import shlex
import tempfile
import time
from pathlib import Path

import torch
from attacks import SMALL_CODEC, TRAIN_STEPS, train_small_codec  # benchmarks/, beside this script
from finetune_gain import compose_config
from torchvision.transforms import v2

from rnic import rd
from rnic.attacks import APGD, PGD, AutoAttack, Square, ThresholdAttack
from rnic.attacks.threat import MSE_BOX
from rnic.codecs import build_codec, load_weights
from rnic.coding import compress_decompress
from rnic.config import codec_from_config, untrained
from rnic.data import SampleImages, read_image

THREATS = {"mse": 1e-4, "linf": 4 / 255}
X10 = ("auto", "apgd", "pgd", "square")


def load(spec: str, workdir: Path, train_steps: int = TRAIN_STEPS) -> torch.nn.Module:
    if spec.startswith("shipped-q"):
        codec = build_codec(
            "bmshj2018_hyperprior_cpu", quality=int(spec[len("shipped-q") :]), pretrained=True
        )
    elif spec == "small" or spec.startswith("model="):
        overrides = list(SMALL_CODEC) if spec == "small" else shlex.split(spec)
        # one folder per codec and training length: a rerun in the same --workdir reuses what was trained
        tag = hashlib.sha256(f"{overrides} {train_steps}".encode()).hexdigest()[:8]
        slug = re.sub(r"[^\w.-]+", "_", " ".join(overrides))[:80]
        folder = workdir / f"{slug}-{tag}"
        cfg = compose_config("attack", folder, overrides)
        codec = codec_from_config(cfg)
        if untrained(cfg.model, codec):  # no weights named: a briefly trained instance instead
            weights = folder / "train" / "checkpoints" / "last.ckpt"
            if not weights.exists():
                train_small_codec(folder / "train", tuple(overrides), train_steps)
            codec = load_weights(codec, weights)
    else:
        path, widths = spec.split("=")
        arch, n, m = widths.split(":")
        codec = load_weights(build_codec(arch, N=int(n), M=int(m)), path)
    codec.eval()
    codec.update(force=True)
    return codec


def budget(cls: type, setting: str = "steps", times: float = 1.0) -> int:
    """`cls`'s default `setting` (steps or queries) times `times`, at least 1: the library's defaults."""
    return max(1, round(inspect.signature(cls).parameters[setting].default * times))


def attacks(codec, threat: str, scale: float, x10: tuple[str, ...] = X10) -> dict:
    """Every shipped attack at its defaults (and those of `x10` at 10x), under `threat`; the paper's recipe
    under mse."""
    eps = THREATS[threat]
    made = {}
    for factor, tag in ((1, ""), (10, " x10")):
        if factor > 1 and not x10:
            break
        times = factor * scale
        made[f"auto{tag}"] = AutoAttack(
            codec, threat=threat, eps=eps, steps=budget(AutoAttack, times=times),
            queries=budget(AutoAttack, "queries", times), select="vi", round_8bit=True,
        )  # fmt: skip
        made[f"apgd{tag}"] = APGD(
            codec, threat=threat, eps=eps, steps=budget(APGD, times=times), round_8bit=True
        )
        made[f"pgd{tag}"] = PGD(
            codec, threat=threat, eps=eps, steps=budget(PGD, times=times), round_8bit=True
        )
        made[f"square{tag}"] = Square(
            codec, threat=threat, eps=eps, queries=budget(Square, "queries", times), round_8bit=True
        )
    made = {name: attack for name, attack in made.items() if " x10" not in name or name.split()[0] in x10}
    if threat == "mse":
        made["paper recipe"] = ThresholdAttack(
            codec, eps=eps, box=MSE_BOX, steps=budget(ThresholdAttack, times=scale), round_8bit=True
        )
    return made


def figures(codec, x: torch.Tensor, x_adv: torch.Tensor) -> tuple[float, float]:
    clean = compress_decompress(codec, x)[0]
    attacked = compress_decompress(codec, x_adv)[0]
    vi = rd.vulnerability_index(attacked, clean, x_adv, x)
    return float(torch.nanmean(vi)), float(rd.psnr(attacked, x).mean())


def timed(codec, attack, x: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
    """Run `attack` on `x`: its adversarial images, their VI and attacked PSNR (means, real bitstreams) and
    the attack's wall time [s] (the attack alone, not the coding)."""
    started = time.perf_counter()
    x_adv = attack(x)
    seconds = time.perf_counter() - started
    return x_adv, *figures(codec, x, x_adv), seconds


def against_recipe(codec, x: torch.Tensor, scale: float = 1.0) -> dict:
    """attack=auto (select=vi) and the paper's recipe under the mse threat, side by side on the same 8-bit
    images: VI, attacked PSNR and seconds of each, and auto's VI gain and time over the recipe's."""
    made = attacks(codec, "mse", scale, x10=())
    measured = {}
    for name in ("auto", "paper recipe"):
        _, vi, psnr, seconds = timed(codec, made[name], x)
        # VI is undefined (None) where no image's reconstruction moved
        measured[name] = {"vi": rd.finite_or_none(vi), "psnr": psnr, "seconds": seconds}
    auto, recipe = measured["auto"], measured["paper recipe"]
    return {
        **measured,
        "vi_gain": None if None in (auto["vi"], recipe["vi"]) else auto["vi"] - recipe["vi"],
        "time_ratio": auto["seconds"] / recipe["seconds"],
    }


def kept_by_psnr(report: dict) -> tuple[float, float]:
    """(VI, attacked PSNR) of an ensemble run's members' examples, per image the one with the lowest
    decoded PSNR: select=psnr's choice among the same examples (without a second run; select=psnr's own
    Square member would aim at the source rather than the clean reconstruction)."""
    members = list(report["members"].values())
    psnr = torch.tensor([m["psnr_adv"] for m in members], dtype=torch.float64)
    vi = torch.tensor([m["vi"] for m in members], dtype=torch.float64)
    kept, images = psnr.argmin(0), torch.arange(psnr.shape[1])
    return float(torch.nanmean(vi[kept, images])), float(psnr[kept, images].mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--codecs", nargs="+", default=["shipped-q1", "shipped-q2", "shipped-q3", "small"])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--x10", nargs="*", default=list(X10), choices=X10)
    parser.add_argument(
        "--train-steps", type=int, default=TRAIN_STEPS, help="steps of a codec trained here (no weights)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keeps the codecs trained here (a rerun reuses them); default: a new temp folder",
    )
    parser.add_argument("--threats", nargs="+", default=list(THREATS), choices=list(THREATS))
    args = parser.parse_args()
    paths = SampleImages().splits()["val"][: args.images]
    x = torch.stack([v2.CenterCrop(args.size)(read_image(p)) for p in paths])
    x = torch.round(x * 255) / 255
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rnic-worst-"))
    for spec in args.codecs:
        codec = load(spec, workdir, args.train_steps)
        for threat in args.threats:
            rows = []
            for name, attack in attacks(codec, threat, args.scale, tuple(args.x10)).items():
                rows.append((name, *timed(codec, attack, x)[1:]))
                if isinstance(attack, AutoAttack):
                    rows.append((f"{name} by PSNR", *kept_by_psnr(attack.last_report), rows[-1][3]))
            print(
                f"\n{spec}, threat {threat} (eps {THREATS[threat]:.6g}), {len(x)} x {args.size}px val crops:"
            )
            print(f"  {'attack':<18} {'VI [dB]':>8} {'PSNR [dB]':>10} {'seconds':>8}")
            for name, vi, psnr, seconds in rows:
                print(f"  {name:<18} {vi:>8.2f} {psnr:>10.2f} {seconds:>8.1f}")
            by_vi = sorted(rows, key=lambda r: -r[1])
            by_psnr = sorted(rows, key=lambda r: r[2])
            print(f"  worst by VI: {by_vi[0][0]} (+{by_vi[0][1] - by_vi[1][1]:.2f} dB over {by_vi[1][0]}); "
                  f"by attacked PSNR: {by_psnr[0][0]} "
                  f"({by_psnr[0][2] - by_psnr[1][2]:+.2f} dB vs {by_psnr[1][0]})")  # fmt: skip
            named = {r[0]: r for r in rows}
            auto = named["auto"]
            if "paper recipe" in named:
                recipe = named["paper recipe"]
                print(f"  auto vs the paper recipe: VI {auto[1] - recipe[1]:+.2f} dB at "
                      f"{auto[3] / recipe[3]:.2f}x its wall time")  # fmt: skip
            if "auto x10" in named:
                print(f"  auto x10 over auto: VI {named['auto x10'][1] - auto[1]:+.2f} dB, "
                      f"attacked PSNR {named['auto x10'][2] - auto[2]:+.2f} dB")  # fmt: skip


if __name__ == "__main__":
    main()
