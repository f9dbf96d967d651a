"""Differentiable stand-ins for the codec's rounding, for white-box gradients."""

from __future__ import annotations

from contextlib import contextmanager

from compressai.entropy_models import EntropyModel
from compressai.ops import quantize_ste
from torch import nn

PROXIES = ("noise", "ste", "skip", "none")


def _proxied_quantize(original, proxy: str):
    def quantize(inputs, mode, means=None):
        # "symbols" is the real encoder's path: never touched.
        if mode == "symbols" or proxy == "none":
            return original(inputs, mode, means)
        if proxy == "noise":  # additive uniform noise, the training-time relaxation
            return original(inputs, "noise", means)
        if proxy == "skip":  # no quantisation at all: g_s(g_a(x)) for the reconstruction
            return inputs
        if means is None:  # straight-through rounding
            return quantize_ste(inputs)
        return quantize_ste(inputs - means) + means

    return quantize


def check_proxy(proxy: str) -> str:
    if proxy not in PROXIES:
        raise ValueError(f"attack.proxy={proxy!r} is unknown; choose one of: {', '.join(PROXIES)}")
    return proxy


@contextmanager
def quantization_proxy(codec: nn.Module, proxy: str):
    """Within the block, every entropy model of `codec` quantises with `proxy` in its forward.

    In eval mode CompressAI rounds with `torch.round`, whose gradient is zero: an attack
    through it learns nothing. `none` keeps the rounding (the zero-gradient guard then fires).
    """
    check_proxy(proxy)
    models = [m for m in codec.modules() if isinstance(m, EntropyModel)]
    for model in models:
        model.quantize = _proxied_quantize(model.quantize, proxy)
    try:
        yield
    finally:
        for model in models:
            del model.quantize  # the class's own method again
