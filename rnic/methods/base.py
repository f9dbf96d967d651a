"""What every training method shares: the step it hands the optimisation, the RD loss, its base class."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.attacks import Attack

TARGETS = ("input", "source")


@dataclass
class Step:
    """What a training method hands the optimisation: the loss, and figures to log."""

    loss: Tensor
    x_hat: Tensor  # the reconstruction whose PSNR against `targets` is logged
    targets: Tensor
    bpp: Tensor  # per image
    logs: dict[str, float] = field(default_factory=dict)


def rd_step(codec: nn.Module, inputs: Tensor, targets: Tensor, lmbda: float, metric: str) -> Step:
    """The rate-distortion loss of `codec` on `inputs`, reconstructing `targets`."""
    x_hat, likelihoods, num_pixels = rd.forward_padded(codec, inputs)
    terms = rd.rate_distortion(x_hat, likelihoods, targets, lmbda, metric, num_pixels)
    return Step(terms["loss"].mean(), x_hat, targets, terms["bpp"])


class TrainingMethod:
    """A training method (`method=`): the loss of each training step of a CodecModule, from the batch
    and the examples `attack` makes against the current codec.

    - `ratio`: the fraction of each batch (its first ceil(ratio x B) images) the method attacks.
    - `target`: what the codec learns to reconstruct from an adversarial input: the adversarial
      `input` itself (Chen & Ma's choice) or the clean `source` (mix, free, fast).
    - `warmup_steps`: the budget grows linearly from 0 to the attack's `eps` over these steps.
    - `validate`: also validate and test on the attacked val/test images.
    - `train`: which parts of the codec learn (all | encoder | decoder), applied to the codec by the
      training job (rnic.methods.train_only), to the clean control too.

    Each setting comes from the method's yaml (rnic/conf/method/<name>.yaml, the shared ones from
    rnic/conf/shared/method_common.yaml); `name` is what runs record the method under.

    A method implements `training_loss(module, x) -> Step`. It may keep state in checkpoints
    (`state_dict`, `load_state_dict`), use the input gradient of the loss's backward (`after_backward`),
    and hold frozen modules of its own (`frozen_modules`: kept in checkpoints, counted in the passes,
    ignored by DDP).
    """

    name = ""
    # With attack=none: False runs the method anyway (it needs no attack: noise); True with
    # `clean_without_attack` makes the run plain RD training (mix, none); otherwise the run is refused.
    needs_attack = True
    clean_without_attack = False

    def __init__(
        self,
        attack: Attack,
        ratio: float = 0.5,
        target: str = "input",
        warmup_steps: int = 0,
        validate: bool = True,
        train: str = "all",
    ):
        if not 0 <= ratio <= 1:
            raise ValueError(f"method.ratio={ratio} must be in [0, 1]")
        if target not in TARGETS:
            raise ValueError(f"method.target={target!r} is unknown; choose input or source")
        if int(warmup_steps) < 0:
            raise ValueError(f"method.warmup_steps={warmup_steps} must be >= 0")
        self.attack = attack
        self.ratio = ratio
        self.target = target
        self.warmup_steps = int(warmup_steps)
        self.validate = validate
        self.train = train

    def training_loss(self, module, x: Tensor) -> Step:
        """The loss of one training step of `module` (a CodecModule) on the batch `x`."""
        raise NotImplementedError

    def after_backward(self) -> None:
        """Called after the loss's backward, before the optimizer step (free training uses it)."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the method's own state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def record(self) -> dict:
        """The method's own figures for final_metrics.json (fast: the step of a collapse)."""
        return {}

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Modules the method runs besides the codec, by name (the teacher's codec)."""
        return {}

    def seed(self, step: int, rank: int) -> int | None:
        """The attack's seed at a step: differs at every step and on every rank, reproducible."""
        return None if self.attack.seed is None else self.attack.seed + 1 + step + 1_000_003 * rank

    def budget(self, step: int):
        """The attack's budget at a training step (ramped during warm-up)."""
        if not self.warmup_steps:
            return self.attack.eps
        scale = min(1.0, (step + 1) / self.warmup_steps)
        return torch.as_tensor(self.attack.eps, dtype=torch.float32) * scale

    def mixed(self, adversarial: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(inputs, targets): `adversarial` in place of the batch's first images; the targets as `target`
        says."""
        inputs = torch.cat([adversarial, x[adversarial.shape[0] :]])
        return inputs, (inputs if self.target == "input" else x)

    def count(self, batch_size: int) -> int:
        """How many images of a batch the method attacks: ceil(ratio x B), so that a ratio above 0 never
        trains a batch clean (at B = 5, ratio 0.5 attacks 3). The tolerance keeps 0.3 x 10 at 3."""
        return math.ceil(self.ratio * batch_size - 1e-9)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.attack}, ratio={self.ratio}, target={self.target}, "
            f"warmup_steps={self.warmup_steps})"
        )
