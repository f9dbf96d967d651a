"""benchmarks/worst_case.py's codecs named by attack.py's model overrides: named weights load as attack.py
loads them, and a codec named without weights is trained before it is attacked (never random weights)."""

from __future__ import annotations

import sys

import torch

from rnic.codecs import build_codec, load_weights
from rnic.io import equal_states
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import worst_case  # noqa: E402  (a script beside the tests' package, as benchmarks import each other)


def test_a_codec_named_by_overrides_has_the_shipped_weights(tmp_path):
    codec = worst_case.load("model=bmshj2018_hyperprior_cpu model.quality=1", tmp_path)
    assert equal_states(
        codec.state_dict(), build_codec("bmshj2018_hyperprior_cpu", quality=1, pretrained=True).state_dict()
    )
    assert not any(tmp_path.rglob("*.ckpt"))  # shipped weights: nothing trained


def test_a_codec_named_without_weights_is_trained_first(tmp_path):
    codec = worst_case.load("model=bmshj2018_hyperprior model.N=8 model.M=8", tmp_path, train_steps=2)
    (checkpoint,) = tmp_path.rglob("last.ckpt")
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 2
    trained = load_weights(build_codec("bmshj2018_hyperprior", N=8, M=8), checkpoint)
    assert equal_states(codec.state_dict(), trained.state_dict())
