"""Adversarial mixing: part of every training batch replaced by adversarial examples generated
against the current codec."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.attacks import Attack, to_8bit

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


class AdversarialMixing:
    """`adv.method=mix`: replace the first `ratio` of each batch by `attack`'s adversarial examples.

    - `target`: what the codec learns to reconstruct from an adversarial input: the adversarial
      `input` itself (Chen & Ma's choice) or the clean `source`.
    - `warmup_steps`: the budget grows linearly from 0 to the attack's `eps` over these steps.
    - `every`: generate new examples every k steps; in between, the last perturbation is
      applied to the new images (cheap, and still within the budget after clipping).
    - `validate`: also validate and test on the attacked val/test images.
    """

    def __init__(
        self,
        attack: Attack,
        ratio: float = 0.5,
        target: str = "input",
        warmup_steps: int = 0,
        every: int = 1,
        validate: bool = True,
    ):
        if not 0 <= ratio <= 1:
            raise ValueError(f"adv.ratio={ratio} must be in [0, 1]")
        if target not in TARGETS:
            raise ValueError(f"adv.target={target!r} is unknown; choose input or source")
        if int(every) < 1 or int(warmup_steps) < 0:
            raise ValueError(f"adv.every={every} must be >= 1 and adv.warmup_steps={warmup_steps} >= 0")
        self.attack = attack
        self.ratio = ratio
        self.target = target
        self.warmup_steps = int(warmup_steps)
        self.every = int(every)
        self.validate = validate
        self._delta: Tensor | None = None

    name = "mix"

    def seed(self, step: int, rank: int) -> int | None:
        """The attack's seed at a step: differs at every step and on every rank, reproducible."""
        return None if self.attack.seed is None else self.attack.seed + 1 + step + 1_000_003 * rank

    def training_loss(self, module, x: Tensor) -> Step:
        """The loss of one training step of `module` (a CodecModule) on the batch `x`."""
        inputs, targets = self.mix(x, module.global_step, module.global_rank)
        step = rd_step(module.codec, inputs, targets, module.lmbda, module.metric)
        step.logs["train/adv_images"] = float(self.count(x.shape[0]))
        return step

    def after_backward(self) -> None:
        """Called after the loss's backward, before the optimizer step (free training uses it)."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the method's own state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def budget(self, step: int):
        """The attack's budget at a training step (ramped during warm-up)."""
        if not self.warmup_steps:
            return self.attack.eps
        scale = min(1.0, (step + 1) / self.warmup_steps)
        return torch.as_tensor(self.attack.eps, dtype=torch.float32) * scale

    def count(self, batch_size: int) -> int:
        return round(self.ratio * batch_size)

    def mix(self, x: Tensor, step: int, rank: int = 0) -> tuple[Tensor, Tensor]:
        """(inputs, targets): the first `count` images adversarial, the rest clean.

        Random starts differ at every step and on every rank, yet are reproducible from the seed.
        """
        n = self.count(x.shape[0])
        if n == 0:
            return x, x
        source = x[:n]
        if step % self.every == 0 or self._delta is None or self._delta.shape != source.shape:
            adversarial = self.attack(source, eps=self.budget(step), seed=self.seed(step, rank))
            self._delta = (adversarial - source).detach()
        else:  # the last perturbation on new images, delivered as the attack delivers its own
            adversarial = (source + self._delta).clamp(0, 1)
            if self.attack.round_8bit:
                adversarial = to_8bit(source, adversarial)
        inputs = torch.cat([adversarial, x[n:]])
        targets = inputs if self.target == "input" else x
        return inputs, targets

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.attack}, ratio={self.ratio}, target={self.target}, "
            f"warmup_steps={self.warmup_steps}, every={self.every})"
        )
