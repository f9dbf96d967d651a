"""Robust training methods (`adv.method=`), all driven by the same `attack=` config, and the exact count of
the codec passes they cost (rnic.methods.passes).

- `none`: clean rate-distortion training (the equal-compute control); the attack only validates.
- `mix`: part of each batch replaced by fresh adversarial examples.
- `free`: each batch replayed `adv.replays` times; one backward per replay gives the codec's gradient
  and the input gradient, which moves a perturbation carried over from batch to batch.
- `fast`: a single step of 1.25 x the budget from a uniform random start, guarded against
  catastrophic overfitting by a periodic check against the configured (multi-step) attack.
- `consistency`: RD loss on clean images + beta * lmbda * D(x_hat(x_adv), x_hat(x)), the
  adversarial example maximising that distance (TRADES' form); both reconstructions under the
  quantisation `adv.proxy` (ste: the real rounding, straight-through gradient), the clean one a fixed
  reference (`adv.detach`).
- `teacher`: RD loss on clean images + beta * lmbda * D(x_hat(x_adv), teacher(x)), the teacher a
  frozen copy of the starting codec (or `adv.teacher=PATH` of the same architecture).
- `latent`: RD loss on clean images + beta * MSE(g_a(x_adv), g_a(x)) in quantisation bins: the
  analysis transform made insensitive to the perturbation, with no decoder pass in its term.
- `jacobian`: RD loss on clean images + beta * lmbda * D(x_hat(x + h v), x_hat(x)), v random signs: an
  input-gradient (Jacobian) penalty without an attack; a codec trained with it is a regularised teacher
  for `teacher` (`adv.teacher=PATH`), as in Cao et al.
- `noise`: Gaussian noise on part of each batch, the clean source as the target (center smoothing).

consistency, teacher and latent take their adversarial examples from the configured attack or, with
`adv.adversary=single_step`, from one random-start step (as `fast`), which leaves most of the compute to
optimizer updates. Every method takes `adv.train=all|encoder|decoder` (applied by the training job, the
control included): encoder-only keeps the decoder and the bitstream format of the starting codec.

`adv.method=NAME` builds the class that `rnic/conf/method/NAME.yaml` names by its `_target_`; a method of your
own is a TrainingMethod subclass with such a yaml on Hydra's search path (docs/extending.md).
"""

from __future__ import annotations

import inspect

from hydra.utils import get_class
from torch import nn

from rnic.attacks import Attack
from rnic.methods.base import Step, TrainingMethod, rd_step
from rnic.methods.clean import CleanTraining, NoiseTraining
from rnic.methods.consistency import ConsistencyTraining, LatentConsistency, TeacherTraining
from rnic.methods.fast import FastTraining, RandomStartFGSM
from rnic.methods.free import FreeTraining
from rnic.methods.jacobian import JacobianPenalty
from rnic.methods.mix import MixTraining
from rnic.methods.passes import PassCount, count_passes

# The parts of a CompressAI codec that learn under `adv.train` (the rest, entropy models included, frozen).
TRAINED_PARTS = {"encoder": ("g_a", "h_a"), "decoder": ("g_s",)}

__all__ = [
    "CleanTraining", "ConsistencyTraining", "FastTraining", "FreeTraining", "JacobianPenalty",
    "LatentConsistency", "MixTraining", "NoiseTraining", "PassCount", "RandomStartFGSM", "Step",
    "TeacherTraining", "TrainingMethod", "build_method", "check_method_settings", "count_passes",
    "method_class", "rd_step", "train_only",
]  # fmt: skip


def _keys(cls: type) -> set[str]:
    """The settings `cls` (and the classes it passes its keyword arguments to) takes."""
    keys: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            keys |= set(inspect.signature(klass.__init__).parameters) - {"self", "attack", "kwargs"}
    return keys


def method_class(method: str) -> type[TrainingMethod]:
    """The class that `rnic/conf/method/<method>.yaml` names (`adv.method`), from Hydra's search path."""
    from rnic.config import config_group  # Hydra, not Lightning

    options = config_group("method")
    if method not in options:
        raise ValueError(f"adv.method={method!r} is unknown; choose one of: {', '.join(options)}")
    target = options[method].get("_target_")
    try:
        cls = get_class(target)
    except Exception as err:  # Hydra wraps the import error
        raise ValueError(f"method/{method}.yaml: _target_ {target!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
        raise ValueError(f"method/{method}.yaml: _target_ {target!r} is not a rnic.methods.TrainingMethod")
    return cls


def build_method(attack: Attack, method: str = "mix", **settings) -> TrainingMethod:
    """The training method `adv.method` around `attack`, with the `adv.*` settings it takes (the others,
    such as free's `replays` for mix, do not concern it)."""
    cls = check_method_settings(method, settings.get("replays", 4), settings.get("beta", 1.0))
    built = cls(attack, **{key: value for key, value in settings.items() if key in _keys(cls)})
    built.name = method  # the name its runs are recorded under
    return built


def check_method_settings(method: str, replays: int = 4, beta: float = 1.0) -> type[TrainingMethod]:
    """The class of `method`, after refusing an unknown method, free's m < 1, a negative beta (before
    anything is built)."""
    cls = method_class(method)
    if int(replays) != replays or int(replays) < 1:
        raise ValueError(f"adv.replays={replays} must be an integer >= 1 (free's replays per batch)")
    if not float(beta) >= 0:
        raise ValueError(f"adv.beta={beta} must be >= 0")
    return cls


def train_only(codec: nn.Module, part: str) -> None:
    """Freeze every parameter of `codec` outside `part` (`adv.train`): `encoder` (the analysis transforms;
    decoder, entropy models and so the bitstream format stay the starting codec's), `decoder` (the synthesis
    transform), or `all`."""
    if part == "all":
        return
    if part not in TRAINED_PARTS:
        raise ValueError(f"adv.train={part!r} is unknown; choose one of: all, {', '.join(TRAINED_PARTS)}")
    names = TRAINED_PARTS[part]
    missing = [name for name in names if not isinstance(getattr(codec, name, None), nn.Module)]
    if missing:
        raise ValueError(
            f"adv.train={part}: {type(codec).__name__} has no {', '.join(missing)} (the {part} of a "
            "CompressAI codec); use adv.train=all"
        )
    for name, param in codec.named_parameters():
        param.requires_grad_(name.split(".")[0] in names)
