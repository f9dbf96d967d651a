"""`method=mix`: part of every training batch replaced by adversarial examples generated against the
current codec."""

from __future__ import annotations

from torch import Tensor

from rnic.attacks import Attack, to_8bit
from rnic.methods.base import Step, TrainingMethod, rd_step


class MixTraining(TrainingMethod):
    """`mix`: the first `ratio` of each batch replaced by `attack`'s adversarial examples, the RD loss
    on the mixed batch. `every`: new examples every k steps; in between, the last perturbation is
    applied to the new images (cheap, and still within the budget after clipping)."""

    clean_without_attack = True  # the default method: with attack=none, train.py trains clean

    name = "mix"

    def __init__(self, attack: Attack, every: int = 1, **kwargs):
        super().__init__(attack, **kwargs)
        if int(every) < 1:
            raise ValueError(f"method.every={every} must be >= 1")
        self.every = int(every)
        self._delta: Tensor | None = None

    def training_loss(self, module, x: Tensor) -> Step:
        inputs, targets = self.mix(x, module.global_step, module.global_rank)
        step = rd_step(module.codec, inputs, targets, module.lmbda, module.metric)
        step.logs["train/adv_images"] = float(self.count(x.shape[0]))
        return step

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
        return self.mixed(adversarial, x)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", every={self.every})"
