"""Regenerate tests/data/tcm_reference.pth.tar and tcm_reference_outputs.pt from the AUTHORS' LIC-TCM code.

tests/test_tcm.py checks that rnic's `model=tcm` loads the state dict strictly and reproduces these outputs:
y = g_a(x), the likelihoods, x_hat (eval and training forward), the compressed strings and the decoded image.

The authors' code (github.com/jmliu206/LIC_TCM, models/tcm.py, commit AUTHORS_COMMIT) needs timm and einops,
which rnic does not depend on; run this in a separate environment:

    python -m venv --system-site-packages /tmp/tcm-scratch && /tmp/tcm-scratch/bin/pip install timm einops
    git clone https://github.com/jmliu206/LIC_TCM /tmp/LIC_TCM && git -C /tmp/LIC_TCM checkout AUTHORS_COMMIT
    /tmp/tcm-scratch/bin/python tests/data/make_tcm_reference.py /tmp/LIC_TCM/models/tcm.py [--check-full]

Their model writes some widths as numbers (M=320 channels of y, 192 of z, 224 and 128 in the entropy
networks, SWAtten's 128 channels and 16-channel heads, the hyperprior's 32-channel heads). For a reference
file of a few hundred kB, `patched_source` replaces exactly those numbers by attributes (each replacement
is counted, so a changed source stops the script) and nothing else: rnic's defaults are these numbers.
`--check-full` also compares the unpatched source against the patched one with the defaults (same keys,
shapes and outputs) and against rnic's model at the authors' full size (N=64, M=320), in process.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

AUTHORS_COMMIT = "6c6d7a364817a4c372bd210dbbcb175f9172caa0"
OUT = Path(__file__).resolve().parent
SEED = 0
TRAIN_SEED = SEED + 2
# The tiny instance: every kind of block (window and shifted-window layers in the transforms, the
# hyperprior and SWAtten; two slices, the second conditioned on the first) at a few hundred kB.
WIDTHS = dict(N=4, M=8, num_slices=2, max_support_slices=5, config=[2, 1, 1, 2, 1, 1], head_dim=[2] * 6)
FIXED = dict(
    window_size=4,
    hyper_channels=4,
    hyper_head_dim=2,
    hyper_window_size=2,
    attention_dim=8,
    attention_head_dim=4,
    entropy_widths=[8, 8],
)
DEFAULT_FIXED = dict(
    window_size=8,
    hyper_channels=192,
    hyper_head_dim=32,
    hyper_window_size=4,
    attention_dim=128,
    attention_head_dim=16,
    entropy_widths=[224, 128],
)
# The smallest side the authors' code takes: y must be more than one window wide (they pad a map of one
# window or less to an odd size that no window tiles), so 128 for the tiny windows, 256 for theirs.
SIDE, FULL_SIDE = 128, 256
Y_GAIN = 10.0  # y's spread: about 3 bits per symbol, so that the streams hold many nonzero symbols

# (original text, replacement, occurrences) in the authors' TCM.__init__, applied in this order.
REPLACEMENTS = [
    ("        self.M = M\n", "        self.M = M\n        self.__dict__.update(kwargs['fixed'])\n", 1),
    ("        self.window_size = 8\n", "        self.window_size = kwargs['fixed']['window_size']\n", 1),
    (
        "ConvTransBlock(N, N, 32, 4, 0,",
        "ConvTransBlock(N, N, self.hyper_head_dim, self.hyper_window_size, 0,",
        3,
    ),
    (
        ", 16, self.window_size,0, inter_dim=128)",
        ", self.attention_head_dim, self.window_size,0, inter_dim=self.attention_dim)",
        2,
    ),
    (
        "conv(224, 128, stride=1, kernel_size=3)",
        "conv(self.entropy_widths[0], self.entropy_widths[1], stride=1, kernel_size=3)",
        3,
    ),
    (", 224, stride=1, kernel_size=3)", ", self.entropy_widths[0], stride=1, kernel_size=3)", 3),
    ("conv(128, (320//self.num_slices)", "conv(self.entropy_widths[1], (320//self.num_slices)", 3),
    ("320", "self.M", 20),
    ("192", "self.hyper_channels", 4),
]


def patched_source(source: str) -> str:
    """The authors' source with the fixed widths of TCM.__init__ made attributes (see REPLACEMENTS)."""
    start = source.index("class TCM(CompressionModel):")
    body_start = source.index("        super().__init__(entropy_bottleneck_channels=N)", start)
    end = source.index("    def update(", body_start)
    body = source[body_start:end]
    for old, new, count in REPLACEMENTS:
        if body.count(old) != count:
            raise SystemExit(
                f"the authors' source changed: {old!r} occurs {body.count(old)} times, not {count}"
            )
        body = body.replace(old, new)
    return source[:body_start] + body + source[end:]


def load_module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def authors_model(module: types.ModuleType, widths: dict, fixed: dict | None, seed: int) -> torch.nn.Module:
    """Their TCM with seeded weights; y's channels scaled up so that the streams hold many symbols."""
    torch.manual_seed(seed)
    model = module.TCM(**widths, drop_path_rate=0.0, **({} if fixed is None else {"fixed": fixed}))
    with torch.no_grad():
        model.g_a[-1].weight.mul_(Y_GAIN)
    return model


def seeded_image(side: int) -> torch.Tensor:
    """A random 8-bit image (stored as uint8), values in [0, 1]."""
    torch.manual_seed(SEED + 1)
    return torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8)


@torch.no_grad()
def outputs(model: torch.nn.Module, image: torch.Tensor) -> dict:
    """Everything the test compares: eval and training forwards, the streams and the decoded image. The
    training forward's reconstruction is the eval one (both round with straight-through gradients); only
    its likelihoods are noisy."""
    x = image.float() / 255
    model.eval()
    out = model(x)
    model.train()
    torch.manual_seed(TRAIN_SEED)  # the training forward's noise
    noisy = model(x)
    model.eval()
    model.update(force=True)
    encoded = model.compress(x)
    decoded = model.decompress(encoded["strings"], encoded["shape"])["x_hat"]
    return {
        "image": image,
        "y": model.g_a(x),
        "x_hat": out["x_hat"],
        "likelihoods": out["likelihoods"],
        "train_likelihoods": noisy["likelihoods"],
        "strings": encoded["strings"],
        "shape": tuple(encoded["shape"]),
        "decoded": decoded,
    }


def check_full(source: str, patched: str) -> None:
    """The patch changes nothing at the defaults; rnic's model matches the authors' at their full size."""
    sys.path.insert(0, str(OUT.parents[1]))
    from rnic.models.tcm import TCM

    widths = dict(
        N=64, M=320, num_slices=5, max_support_slices=5, config=[2] * 6, head_dim=[8, 16, 32, 32, 16, 8]
    )
    x = seeded_image(FULL_SIDE)
    original = authors_model(load_module("authors_tcm", source), widths, None, SEED)
    patched_model = authors_model(load_module("authors_tcm_patched", patched), widths, DEFAULT_FIXED, SEED)
    state = original.state_dict()
    if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in patched_model.state_dict().items()}:
        raise SystemExit("the patched source at the default widths has other keys or shapes")
    patched_model.load_state_dict(state)
    rnic_model = TCM(**widths)
    rnic_model.load_state_dict(state, strict=True)
    reference = outputs(original, x)
    for name, model in (("patched source", patched_model), ("rnic", rnic_model)):
        other = outputs(model, x)
        print(
            f"full size, {name}: max |y diff| {(other['y'] - reference['y']).abs().max():.2e}, "
            f"max |x_hat diff| {(other['x_hat'] - reference['x_hat']).abs().max():.2e}, "
            f"max |decoded diff| {(other['decoded'] - reference['decoded']).abs().max():.2e}, "
            f"same strings: {other['strings'] == reference['strings']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the authors' models/tcm.py")
    parser.add_argument("--check-full", action="store_true", help="also compare at the authors' full size")
    args = parser.parse_args()
    source = args.source.read_text()
    patched = patched_source(source)
    model = authors_model(load_module("authors_tcm_patched", patched), WIDTHS, FIXED, SEED)
    # Saved before update(), as the authors' training script saves: no entropy coder tables. The legacy
    # format keeps 750 small tensors a third smaller than the zip format; torch.load reads both.
    state = {"state_dict": model.state_dict()}
    torch.save(state, OUT / "tcm_reference.pth.tar", _use_new_zipfile_serialization=False)
    reference = outputs(model, seeded_image(SIDE))
    # Their decoder's output is their forward's reconstruction clamped, bit for bit: stored once.
    decoded = reference.pop("decoded")
    if not torch.equal(decoded, reference["x_hat"].clamp(0, 1)):
        raise SystemExit(
            "the decoded image differs from the clamped forward: store it (reference['decoded'])"
        )
    reference["meta"] = {
        "authors_commit": AUTHORS_COMMIT,
        "widths": WIDTHS,
        "fixed": FIXED,
        "train_seed": TRAIN_SEED,
    }
    torch.save(reference, OUT / "tcm_reference_outputs.pt", _use_new_zipfile_serialization=False)
    symbols = reference["y"].numel()
    print(
        f"wrote {OUT}/tcm_reference.pth.tar and tcm_reference_outputs.pt: {symbols} symbols of y in "
        f"{len(reference['strings'][0][0])} bytes, z in {len(reference['strings'][1][0])} bytes"
    )
    if args.check_full:
        check_full(source, patched)


if __name__ == "__main__":
    main()
