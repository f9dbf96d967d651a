"""Projected gradient descent (ascent on the objective) under a threat model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnic.attacks import rng
from rnic.attacks.base import Attack
from rnic.attacks.objectives import Context
from rnic.attacks.proxy import per_image_noise


class PGD(Attack):
    """PGD: `steps` gradient steps of size `alpha`, each projected onto the threat's set.

    `threat` is linf (sign steps), l2 or mse (steps along the per-image normalised gradient; the
    L2 budget is the norm of the whole perturbation of each image). `eps=None` is the threat's
    default budget; `alpha=None` is 2.5 * radius / steps (Madry et al.'s rule), per image.
    """

    def __init__(
        self,
        codec: nn.Module,
        threat: str = "linf",
        eps: float | Tensor | None = None,
        alpha: float | None = None,
        steps: int = 10,
        random_start: bool = True,
        **kwargs,
    ):
        super().__init__(codec, eps=self.bind_threat(threat, eps), **kwargs)
        if int(steps) < 1:
            raise ValueError(f"attack.steps={steps} must be >= 1")
        if alpha is not None and not alpha > 0:
            raise ValueError(f"attack.alpha={alpha} must be > 0")
        self.alpha = alpha
        self.steps = int(steps)
        self.random_start = random_start

    def perturb(self, x: Tensor, ctx: Context, eps: Tensor) -> Tensor:
        threat = self.threat_model
        threat.check(eps, x.shape)
        generators = rng.image_generators(x.shape[0], x.device)
        alpha = 2.5 * threat.radius(x, eps) / self.steps if self.alpha is None else self.alpha
        x_adv = threat.random_start(x, eps, generators) if self.random_start else x.clone()
        with per_image_noise(generators):
            for step in range(self.steps):
                x_adv.requires_grad_(True)
                value = self.value(x_adv, ctx)
                (grad,) = torch.autograd.grad(value.sum(), x_adv)
                if step == 0:
                    self.check_gradient(grad)
                with torch.no_grad():
                    x_adv = threat.project(x, x_adv + alpha * threat.ascent(grad), eps)
        return x_adv


class RandomStartFGSM(PGD):
    """One ascent step of `step_scale` x the threat's radius from a random start (Wong et al.): uniform in the
    L-inf box, on the sphere of the budget for l2 and mse (Threat.random_start)."""

    def __init__(self, codec: nn.Module, step_scale: float = 1.25, **kwargs):
        super().__init__(codec, steps=1, random_start=True, **kwargs)
        self.step_scale = step_scale

    def perturb(self, x: Tensor, ctx, eps: Tensor) -> Tensor:
        self.alpha = self.step_scale * self.threat_model.radius(x, eps)
        try:
            return super().perturb(x, ctx, eps)
        finally:
            self.alpha = None
