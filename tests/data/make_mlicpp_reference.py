"""Regenerate tests/data/mlicpp_*: the AUTHORS' MLIC++ at small widths, seeded, and what it outputs.

tests/test_mlicpp.py checks rnic's `model=mlicpp` against these files. They come from the authors' own
code (JiangWeibeta/MLIC, folder MLIC++, commit 4aa9d2a512eb9db382172058e6c278fb0d376e17), run in a scratch
environment that holds it; rnic is not imported here.

    python -m venv --system-site-packages /tmp/mlicpp-scratch
    echo /path/to/rnic/.venv/lib/python3.11/site-packages > \
        /tmp/mlicpp-scratch/lib/python3.11/site-packages/rnic_venv.pth   # torch, compressai 1.2.8
    /tmp/mlicpp-scratch/bin/pip install timm einops                   # what their code imports
    git clone https://github.com/JiangWeibeta/MLIC && git -C MLIC checkout 4aa9d2a512eb
    /tmp/mlicpp-scratch/bin/python tests/data/make_mlicpp_reference.py MLIC/MLIC++ tests/data

Two releases, as the authors' README describes them: "2023" (their six MSE and six MS-SSIM checkpoints,
which need their LatentResidualPredictionOld and SynthesisTransformOld: the README says to use those) and
"2024" (the updated checkpoint, the code as it stands). Files:
- mlicpp_<release>_weights.pth.xz, one per release: the seeded state dict as their training script saves it
  ({"epoch", "state_dict"} with DistributedDataParallel's `module.` prefixes), xz-compressed for the
  repository. The weights are PyTorch's default initialisation under seed 0, g_a's and h_a's last
  convolutions scaled by 30 and the scale outputs' biases lifted by 2 (below), and each tensor of
  more than 1024 values repeats its first 127 (a period no kernel or channel count divides), so that the
  file compresses to some hundred kB; the test does not depend on the weights' values.
- mlicpp_outputs.pt: the fixed 64x128 input `x` and, per release, their eval-mode forward (y = g_a(x),
  the y and z likelihoods, x_hat), their compress() strings and their decompress() x_hat.

Two shims let their code (written for CompressAI 1.2.0b3) run on the CompressAI 1.2.8 rnic uses:
`compressai.ops.ste_round` is now `quantize_ste` (the same expression), and their compress/decompress
time themselves with `torch.cuda.synchronize()`, which needs a GPU.
"""

from __future__ import annotations

import lzma
import sys
from pathlib import Path

import compressai.ops
import torch
import torch.nn.functional as F
from torch import nn

COMMIT = "4aa9d2a512eb9db382172058e6c278fb0d376e17"
WIDTHS = {"N": 32, "M": 96, "slice_num": 3, "context_window": 5}  # slices of 32: the least their heads allow
PERIOD, SMALL = 127, 1024


def authors_model(source: Path, release: str):
    compressai.ops.ste_round = compressai.ops.quantize_ste
    torch.cuda.synchronize = lambda *args, **kwargs: None
    sys.path.insert(0, str(source))
    import models.mlicpp as authors
    from modules.transform import (
        LatentResidualPrediction,
        LatentResidualPredictionOld,
        SynthesisTransform,
        SynthesisTransformOld,
    )
    from utils.utils import Config

    old = release == "2023"
    authors.LatentResidualPrediction = LatentResidualPredictionOld if old else LatentResidualPrediction
    authors.SynthesisTransform = SynthesisTransformOld if old else SynthesisTransform
    torch.manual_seed(0)
    net = authors.MLICPlusPlus(Config({**WIDTHS, "act": nn.GELU}))
    with torch.no_grad():
        for value in net.state_dict().values():
            if value.is_floating_point() and value.numel() > SMALL:
                period = value.view(-1)[:PERIOD].clone()
                value.view(-1).copy_(period.repeat(value.numel() // PERIOD + 1)[: value.numel()])
        # Seeded weights give a y of about 0.1 that rounds to 0 everywhere: widen y and z over several
        # bins and lift the predicted scales, so that the coded symbols and scale indexes vary.
        for last in (net.g_a.analysis_transform[-1], net.h_a.reduction[-1]):
            last.weight.mul_(30)
            last.bias.mul_(30)
        for params in (*net.entropy_parameters_anchor, *net.entropy_parameters_nonanchor):
            params.fusion[-1].bias[: net.slice_ch].add_(2.0)
    net.update(force=True)
    return net.eval()


def reference_input() -> torch.Tensor:
    torch.manual_seed(1)
    coarse = torch.rand(1, 3, 8, 16)
    return F.interpolate(coarse, size=(64, 128), mode="bilinear", align_corners=False)


@torch.no_grad()
def main(source: Path, out: Path) -> None:
    x = reference_input()
    outputs = {"commit": COMMIT, "widths": WIDTHS, "x": x}
    for release in ("2023", "2024"):
        net = authors_model(source, release)
        forward = net(x)
        encoded = net.compress(x)
        decoded = net.decompress(encoded["strings"], encoded["shape"])
        pair = (forward["x_hat"], decoded["x_hat"])
        state = {f"module.{key}": value for key, value in net.state_dict().items()}
        raw = out / f"mlicpp_{release}_weights.pth"
        torch.save({"epoch": 1, "state_dict": state}, raw)
        (out / f"{raw.name}.xz").write_bytes(lzma.compress(raw.read_bytes(), preset=9))
        raw.unlink()
        outputs[release] = {
            "y": net.g_a(x),
            "y_likelihoods": forward["likelihoods"]["y_likelihoods"],
            "z_likelihoods": forward["likelihoods"]["z_likelihoods"],
            "x_hat": forward["x_hat"],
            "strings": encoded["strings"],
            "shape": tuple(encoded["shape"]),
            # one storage in the file where their forward is their decode, bit for bit
            "decoded_x_hat": forward["x_hat"] if torch.equal(*pair) else decoded["x_hat"],
        }
        gap = (forward["x_hat"] - decoded["x_hat"]).abs().max().item()
        sizes = [len(stream[0]) for stream in encoded["strings"]]
        print(f"{release}: y {sizes[0]} + z {sizes[1]} bytes, forward vs decode {gap:.2e}")
        for name in [n for n in sys.modules if n.split(".")[0] in ("models", "modules", "utils")]:
            del sys.modules[name]  # the next release patches a fresh import
        sys.path.remove(str(source))
    torch.save(outputs, out / "mlicpp_outputs.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
