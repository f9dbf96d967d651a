"""Robust training methods (`method=`), all driven by the same `attack=` config, and the exact count of
the codec passes they cost (rnic.methods.passes).

- `none`: clean rate-distortion training (the equal-compute control); the attack only validates.
- `mix`: part of each batch replaced by fresh adversarial examples.
- `free`: each batch replayed `method.replays` times; one backward per replay gives the codec's gradient
  and the input gradient, which moves a perturbation carried over from batch to batch.
- `fast`: a single step of 1.25 x the budget from a uniform random start, guarded against
  catastrophic overfitting by a periodic check against the configured (multi-step) attack.
- `consistency`: RD loss on clean images + beta * lmbda * D(x_hat(x_adv), x_hat(x)), the
  adversarial example maximising that distance (TRADES' form); both reconstructions under the
  quantisation `method.term_proxy` (ste: the real rounding, straight-through gradient), the clean one a fixed
  reference (`method.detach`).
- `teacher`: RD loss on clean images + beta * lmbda * D(x_hat(x_adv), teacher(x)), the teacher a
  frozen copy of the starting codec (or `method.teacher=PATH` of the same architecture).
- `latent`: RD loss on clean images + beta * MSE(g_a(x_adv), g_a(x)) in quantisation bins: the
  analysis transform made insensitive to the perturbation, with no decoder pass in its term.
- `jacobian`: RD loss on clean images + beta * lmbda * D(x_hat(x + h v), x_hat(x)), v random signs: an
  input-gradient (Jacobian) penalty without an attack; a codec trained with it is a regularised teacher
  for `teacher` (`method.teacher=PATH`), as in Cao et al.
- `noise`: Gaussian noise on part of each batch, the clean source as the target (center smoothing).

consistency, teacher and latent take their adversarial examples from the configured attack or, with
`method.adversary=single_step`, from one random-start step (as `fast`), which leaves most of the compute to
optimizer updates. Every method takes `method.train=all|encoder|decoder` (applied by the training job, the
control included): encoder-only keeps the decoder and the bitstream format of the starting codec.

`method=NAME` composes `rnic/conf/method/NAME.yaml`, the method's constructor (`_target_`) with its own
settings and those every method shares (rnic/conf/shared/method_common.yaml); the training job builds it with
`instantiate(cfg.method, attack=attack)`. A method of your own is a TrainingMethod subclass with such a yaml
on Hydra's search path (docs/extending.md).
"""

from __future__ import annotations

from torch import nn

from rnic.methods.base import Step, TrainingMethod, rd_step
from rnic.methods.clean import CleanTraining, NoiseTraining
from rnic.methods.consistency import ConsistencyTraining, LatentConsistency, TeacherTraining
from rnic.methods.fast import FastTraining
from rnic.methods.free import FreeTraining
from rnic.methods.jacobian import JacobianPenalty
from rnic.methods.mix import MixTraining
from rnic.methods.passes import PassCount, count_passes

# The parts of a CompressAI codec that learn under `method.train` (the rest, entropy models included, frozen).
TRAINED_PARTS = {"encoder": ("g_a", "h_a"), "decoder": ("g_s",)}

__all__ = [
    "CleanTraining", "ConsistencyTraining", "FastTraining", "FreeTraining", "JacobianPenalty",
    "LatentConsistency", "MixTraining", "NoiseTraining", "PassCount", "Step",
    "TeacherTraining", "TrainingMethod", "count_passes", "rd_step", "train_only",
]  # fmt: skip


def train_only(codec: nn.Module, part: str) -> None:
    """Freeze every parameter of `codec` outside `part` (`method.train`): `encoder` (the analysis transforms;
    decoder, entropy models and so the bitstream format stay the starting codec's), `decoder` (the synthesis
    transform), or `all`."""
    if part == "all":
        return
    if part not in TRAINED_PARTS:
        raise ValueError(f"method.train={part!r} is unknown; choose one of: all, {', '.join(TRAINED_PARTS)}")
    names = TRAINED_PARTS[part]
    missing = [name for name in names if not isinstance(getattr(codec, name, None), nn.Module)]
    if missing:
        raise ValueError(
            f"method.train={part}: {type(codec).__name__} has no {', '.join(missing)} (the {part} of a "
            "CompressAI codec); use method.train=all"
        )
    for name, param in codec.named_parameters():
        param.requires_grad_(name.split(".")[0] in names)
