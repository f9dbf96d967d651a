"""Codecs outside CompressAI's quality-ladder zoo, by config name: CompressAI's ELIC (official and
Chandelier variants), cheng2020-anchor with a checkerboard context and variable-rate hyperpriors, and the
codecs written in rnic (rnic/models/: LIC-TCM, MLIC++).

Their eval-mode forward reconstructs exactly what their decoder decodes: each quantises y (and z) as
round(v - mean) + mean with straight-through gradients (`quantize_ste`), the value the range coder
codes. That is also what a white-box attack differentiates, whatever its `proxy` (which changes only the
likelihoods of the rate term). So `rnic.attacks.square.is_autoregressive` is False for them, unlike
mbt2018 and cheng2020, whose forward rounds y without its predicted mean.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from compressai.entropy_models import EntropyBottleneck, EntropyBottleneckVbr
from compressai.models import (
    Cheng2020AnchorCheckerboard,
    Elic2022Chandelier,
    Elic2022Official,
    JointAutoregressiveHierarchicalPriorsVbr,
    MeanScaleHyperpriorVbr,
    ScaleHyperpriorVbr,
)
from compressai.zoo import image as zoo_image
from compressai.zoo import image_vbr
from torch import nn

from rnic.models.mlicpp import MLICPlusPlus
from rnic.models.tcm import TCM

# ELIC's lambdas (He et al., CVPR 2022, Sec. 4; the ELiC re-implementation's released checkpoints
# ELIC_0004 ... ELIC_0450 use 0.0004 ... 0.045), low to high rate: loss = lambda * 255^2 * MSE + bpp.
ELIC_LAMBDAS = {"mse": (0.0004, 0.0008, 0.0016, 0.0032, 0.0075, 0.015, 0.03, 0.045)}
# CompressAI's default ELIC channel groups for M = 320 (the last one M - 128).
ELIC_GROUPS = (16, 16, 32, 64)
ELIC_VARIANTS = {"official": Elic2022Official, "chandelier": Elic2022Chandelier}


class VariableRate:
    """A CompressAI variable-rate codec (Kamisli et al., DCC 2024) held at one of its rates.

    `rate` r in 1..8 picks the gain Gain[r - 1] (y is quantised with step 1 / gain), the rate CompressAI
    trains with lambda lmbda[r - 1] (its zoo's MSE ladder, 0.0018 ... 0.18): one set of weights codes
    at every rate. forward, compress and decompress run CompressAI's variable-rate path (`stage=2`,
    `s = r - 1`). After changing `rate`, call `update(force=True)` before coding: with the variable
    bottleneck (`vr_entbttlnck`, as CompressAI's released weights have) z's quantisation step, and so its
    tables, depend on the rate. `aux_loss` counts the variable bottleneck's quantiles too.

    `gains` replaces CompressAI's eight gains (0.1 ... 1.0) by others, one rate each: a codec trained at
    other lambdas (rnic's CPU one at the shipped three). CompressAI's forward detaches the gains, so they
    stay as given.
    """

    def __init__(self, N: int, M: int, rate: int = 8, vr_entbttlnck: bool = True, gains=None):
        # mbt2018-vbr's constructor fixes vr_entbttlnck=False itself and takes no such argument.
        super().__init__(N, M, **({"vr_entbttlnck": True} if vr_entbttlnck else {}))
        if gains is not None:
            gains = [float(g) for g in gains]
            if not gains or min(gains) <= 0 or gains != sorted(gains):
                raise ValueError(f"model.gains={gains} must be positive and increasing (low to high rate)")
            self.Gain = nn.Parameter(torch.tensor(gains))
            self.levels = len(gains)
            self.lmbda = None  # CompressAI's training ladder belongs to its own gains
        self.rate = rate

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple(range(1, self.levels + 1))

    @property
    def rate(self) -> int:
        return self._rate

    @rate.setter
    def rate(self, rate: int) -> None:
        if isinstance(rate, bool) or int(rate) != rate or int(rate) not in self.rates:
            raise ValueError(
                f"model.rate={rate} is out of range for {type(self).__name__}; choose an integer "
                f"{self.rates[0]}..{self.rates[-1]}"
            )
        self._rate = int(rate)

    def forward(self, x):
        return super().forward(x, stage=2, s=self._rate - 1)

    def compress(self, x):
        return super().compress(x, stage=2, s=self._rate - 1)

    def decompress(self, strings, shape):
        return super().decompress(strings, shape, stage=2, s=self._rate - 1)

    def aux_loss(self) -> torch.Tensor:
        # CompressAI's sums EntropyBottlenecks only: it would leave the variable bottleneck's quantiles
        # untrained (and return the int 0).
        bottlenecks = (EntropyBottleneck, EntropyBottleneckVbr)
        return sum(m.loss() for m in self.modules() if isinstance(m, bottlenecks))

    def update(self, scale_table=None, force: bool = False) -> bool:
        scale = self.Gain[self._rate - 1].detach().abs() if self.vr_entbttlnck else None
        return super().update(scale_table, force=force, scale=scale)


class ScaleHyperpriorVbrAtRate(VariableRate, ScaleHyperpriorVbr):
    """bmshj2018-hyperprior-vbr at `rate` (see VariableRate)."""


class MeanScaleHyperpriorVbrAtRate(VariableRate, MeanScaleHyperpriorVbr):
    """mbt2018-mean-vbr at `rate` (see VariableRate)."""


class JointAutoregressiveHierarchicalPriorsVbrAtRate(VariableRate, JointAutoregressiveHierarchicalPriorsVbr):
    """mbt2018-vbr at `rate` (see VariableRate): the serial context model, z coded at a fixed step (CompressAI
    gives it no variable bottleneck). Its variable-rate forward codes y pixel by pixel around the context's
    means, as its decoder does."""

    forward_is_decoded = True  # its context model runs inside the forward, unlike mbt2018's


def is_variable_rate(codec: nn.Module) -> bool:
    return isinstance(codec, VariableRate)


def build_elic(N: int, M: int, variant: str = "official", groups=None) -> nn.Module:
    if variant not in ELIC_VARIANTS:
        raise ValueError(f"model.variant={variant!r} is unknown; choose one of: {', '.join(ELIC_VARIANTS)}")
    if groups is None:
        if sum(ELIC_GROUPS) >= M:
            raise ValueError(
                f"model.groups=null (CompressAI's [16, 16, 32, 64, M - 128]) needs model.M > 128, got "
                f"model.M={M}: give model.groups, channel counts summing to M (e.g. [4,4,8,16] for M=32)"
            )
        groups = [*ELIC_GROUPS, M - sum(ELIC_GROUPS)]
    groups = [int(g) for g in groups]
    if sum(groups) != M or min(groups) < 1:
        raise ValueError(f"model.groups={groups} must be positive channel counts summing to model.M={M}")
    return ELIC_VARIANTS[variant](N, M, groups=groups)


def build_checkerboard(N: int) -> nn.Module:
    return Cheng2020AnchorCheckerboard(N)


def build_vbr(
    cls: type, N: int, M: int, rate: int = 8, variable_bottleneck: bool = True, gains=None
) -> nn.Module:
    return cls(N, M, rate=rate, vr_entbttlnck=bool(variable_bottleneck), gains=gains)


# The fixed-rate bottleneck's parameter names and the variable one's (same shapes).
_FIXED_BOTTLENECK_KEY = re.compile(r"^entropy_bottleneck\.(matrices|biases|factors)\.(\d+)$")
_VARIABLE_BOTTLENECK_NAME = {"matrices": "_matrix", "biases": "_bias", "factors": "_factor"}


def from_fixed_rate(codec: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """A fixed-rate state dict of a variable-rate codec's own architecture (mbt2018-mean's for
    mbt2018-mean-vbr) as a full state dict of `codec`: Kamisli et al. train the fixed-rate codec first and
    then the variable-rate modules on top of it. The gains, the quantisation offsets' and z's step networks
    keep `codec`'s initial values; the bottleneck's parameters take the variable bottleneck's names.
    None where `state` is not such a state dict (it holds variable-rate modules, or is not one of `codec`'s
    architecture)."""
    if not is_variable_rate(codec) or "Gain" in state:
        return None
    renamed = {}
    for key, value in state.items():
        match = _FIXED_BOTTLENECK_KEY.match(key)
        if match and codec.vr_entbttlnck:
            key = f"entropy_bottleneck.{_VARIABLE_BOTTLENECK_NAME[match[1]]}{match[2]}"
        renamed[key] = value
    own = codec.state_dict()
    variable_rate_only = ("Gain", "QuantABCD.", "gayn2zqstep.", "lower_bound_zqstep.")
    missing = [k for k in own if k not in renamed and not k.startswith(variable_rate_only)]
    if missing or any(k not in own for k in renamed):
        return None
    return {**{k: v for k, v in own.items() if k.startswith(variable_rate_only)}, **renamed}


def build_mbt2018_vbr(N: int, M: int, rate: int = 8) -> nn.Module:
    return build_vbr(JointAutoregressiveHierarchicalPriorsVbrAtRate, N, M, rate, variable_bottleneck=False)


@dataclass(frozen=True)
class Family:
    """How a config name builds its codec: `make(*widths, **options)` with its default widths and the
    option keys it takes; its qualities (a variable-rate codec's are its rates); their lambdas by metric
    (None: CompressAI's zoo ladder, `rnic.codecs.LAMBDAS`); CompressAI's zoo name where the zoo has
    weights for it."""

    make: Callable[..., nn.Module]
    widths: tuple[int, ...]
    qualities: int
    lambdas: dict[str, tuple[float, ...]] | None = None
    options: tuple[str, ...] = ()
    zoo: str | None = None
    weights_source: str | None = None  # where the weights are when `model.pretrained` cannot fetch them


def own_family(cls: type) -> Family:
    """A codec written in rnic (rnic/models/): its constructor's widths and keys, its lambdas and where its
    authors' weights are (the class says)."""
    parameters = inspect.signature(cls).parameters
    return Family(
        cls,
        (parameters["N"].default, parameters["M"].default),
        len(next(iter(cls.lambdas.values()))),
        cls.lambdas,
        options=tuple(name for name in parameters if name not in ("N", "M")),
        weights_source=cls.weights_source,
    )


FAMILIES = {
    "elic": Family(build_elic, (192, 320), 8, ELIC_LAMBDAS, options=("variant", "groups")),
    # cheng2020-anchor's widths and qualities (He et al. 2021 trained it at the zoo's lambdas).
    "cheng2020_checkerboard": Family(build_checkerboard, zoo_image.cfgs["cheng2020-anchor"][6], 6),
    "bmshj2018_hyperprior_vbr": Family(
        partial(build_vbr, ScaleHyperpriorVbrAtRate),
        image_vbr.cfgs["bmshj2018-hyperprior-vbr"],
        8,
        options=("rate", "variable_bottleneck", "gains"),
        zoo="bmshj2018-hyperprior-vbr",
    ),
    "mbt2018_mean_vbr": Family(
        partial(build_vbr, MeanScaleHyperpriorVbrAtRate),
        image_vbr.cfgs["mbt2018-mean-vbr"],
        8,
        options=("rate", "variable_bottleneck", "gains"),
        zoo="mbt2018-mean-vbr",
    ),
    "mbt2018_vbr": Family(
        build_mbt2018_vbr, image_vbr.cfgs["mbt2018-vbr"], 8, options=("rate",), zoo="mbt2018-vbr"
    ),
    "tcm": own_family(TCM),
    "mlicpp": own_family(MLICPlusPlus),
}


def zoo_url(arch: str, metric: str) -> str | None:
    """The URL of CompressAI's released weights for a family (None where it released none)."""
    zoo = FAMILIES[arch].zoo
    return image_vbr.model_urls.get(zoo, {}).get(metric) if zoo else None
