"""`method=fast` (Wong et al. 2020): a single random-start step per batch (the start uniform in the L-inf
box, on the budget's sphere for l2 and mse), guarded against catastrophic overfitting; the single step also
serves the other methods (`method.adversary=single_step`)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from rnic import rd
from rnic.attacks import Attack, Objective, RandomStartFGSM, gradient_proxy, quantization_proxy
from rnic.methods.base import Step, TrainingMethod, rd_step
from rnic.methods.free import threat_of

log = logging.getLogger(__name__)


def single_step_of(attack: Attack, method: str, objective: Objective | None = None) -> RandomStartFGSM:
    """The single-step counterpart of `attack`: same threat, budget, proxy (an ensemble's: its first gradient
    member's), delivery and seed."""
    return RandomStartFGSM(
        attack.codec,
        threat=threat_of(attack, method).name,
        eps=attack.eps,
        objective=objective if objective is not None else attack.objective,
        proxy=gradient_proxy(attack),
        round_8bit=attack.round_8bit,
        seed=attack.seed,
    )


def objective_value(attack: Attack, x: Tensor, x_adv: Tensor) -> Tensor:
    """The mean value of `attack`'s objective at `x_adv` (no gradient; the codec in eval mode)."""
    codec = attack.codec
    with rd.evaluating(codec), torch.no_grad(), quantization_proxy(codec, gradient_proxy(attack)):
        ctx = attack.objective.context(codec, x, None, None)
        return attack.value(x_adv, ctx).mean()


class FastTraining(TrainingMethod):
    """`fast`: the first `ratio` of each batch replaced by a random-start single-step example.

    Guard: every `guard_every` steps the configured attack runs on the same images; when its objective
    exceeds `guard_ratio` x the single step's (catastrophic overfitting: the single step no longer finds
    what a real attack finds), the guard fires: it is logged, recorded in the final table, and the rest
    of the run trains on the configured attack's examples instead (what mix does)."""

    name = "fast"

    def __init__(self, attack: Attack, guard_every: int = 50, guard_ratio: float = 3.0, **kwargs):
        super().__init__(attack, **kwargs)
        if int(guard_every) < 0 or not guard_ratio > 0:
            raise ValueError(
                f"method.guard_every={guard_every} must be >= 0 and method.guard_ratio={guard_ratio} > 0"
            )
        self.single_step = single_step_of(attack, self.name)
        self.guard_every = int(guard_every)
        self.guard_ratio = float(guard_ratio)
        self.collapsed_at: int | None = None
        self.guard_values: tuple[float, float] | None = None

    def training_loss(self, module, x: Tensor) -> Step:
        step_number, rank = module.global_step, module.global_rank
        n = self.count(x.shape[0])
        source = x[:n]
        eps, seed = self.budget(step_number), self.seed(step_number, rank)
        logs = {"train/adv_images": float(n)}
        if n and self.collapsed_at is not None:
            adversarial = self.attack(source, eps=eps, seed=seed)
        elif n:
            adversarial = self.single_step(source, eps=eps, seed=seed)
            if self.guard_every and step_number % self.guard_every == 0:
                logs.update(self.guard(module, source, adversarial, eps, seed))
        else:
            adversarial = source
        inputs, targets = self.mixed(adversarial, x)
        step = rd_step(module.codec, inputs, targets, module.lmbda, module.metric)
        step.logs.update(logs)
        step.logs["train/fast_collapsed"] = float(self.collapsed_at is not None)
        return step

    def guard(self, module, source: Tensor, single: Tensor, eps, seed) -> dict[str, float]:
        strong = self.attack(source, eps=eps, seed=seed)
        single_value = float(objective_value(self.attack, source, single))
        strong_value = float(objective_value(self.attack, source, strong))
        ratio = strong_value / max(single_value, 1e-12)
        fired = ratio > self.guard_ratio
        # Every rank decides together, so that all ranks keep doing the same passes.
        if module.trainer.strategy.reduce_boolean_decision(fired, all=False):
            self.collapsed_at = module.global_step
            self.guard_values = (strong_value, single_value)
            log.warning(
                "method=fast: catastrophic overfitting at step %d: the guard's attack reaches an "
                "objective of %.4g, the single step only %.4g (ratio %.2f > method.guard_ratio=%g); the rest "
                "of the run trains on %s's examples",
                module.global_step,
                strong_value,
                single_value,
                ratio,
                self.guard_ratio,
                type(self.attack).__name__,
            )
        return {"train/guard_ratio": ratio}

    def record(self) -> dict:
        return {"fast_collapse_step": self.collapsed_at}

    def state_dict(self) -> dict:
        return {"collapsed_at": self.collapsed_at, "guard_values": self.guard_values}

    def load_state_dict(self, state: dict) -> None:
        self.collapsed_at = state.get("collapsed_at")
        self.guard_values = state.get("guard_values")
