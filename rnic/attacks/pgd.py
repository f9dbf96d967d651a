"""Projected gradient descent (ascent on the objective) under an L-inf or L2 budget."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnic.attacks.base import Attack
from rnic.attacks.objectives import Context

NORMS = ("linf", "l2")


def l2_norm(delta: Tensor) -> Tensor:
    return delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


class PGD(Attack):
    """PGD: `steps` gradient steps of size `alpha`, projected on the `eps` ball and [0, 1].

    L-inf takes sign steps; L2 takes steps along the per-image normalised gradient, and
    its budget is the L2 norm of the whole perturbation of each image.
    """

    def __init__(
        self,
        codec: nn.Module,
        norm: str = "linf",
        eps: float | Tensor = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
        **kwargs,
    ):
        super().__init__(codec, eps=eps, **kwargs)
        if norm not in NORMS:
            raise ValueError(f"attack.norm={norm!r} is unknown; choose one of: {', '.join(NORMS)}")
        if int(steps) < 1:
            raise ValueError(f"attack.steps={steps} must be >= 1")
        if not alpha > 0:
            raise ValueError(f"attack.alpha={alpha} must be > 0")
        self.norm = norm
        self.alpha = alpha
        self.steps = int(steps)
        self.random_start = random_start

    def project(self, x: Tensor, delta: Tensor, eps: Tensor) -> Tensor:
        if self.norm == "linf":
            delta = torch.maximum(torch.minimum(delta, eps), -eps)
        else:  # shrink onto the ball, a hair inside so float rounding cannot leave it
            delta = delta * torch.clamp(eps * (1 - 1e-6) / (l2_norm(delta) + 1e-12), max=1.0)
        # Clamping to the image range only moves samples toward the source: the budget still holds.
        return (x + delta).clamp(0, 1) - x

    def perturb(self, x: Tensor, ctx: Context, eps: Tensor) -> Tensor:
        delta = torch.zeros_like(x)
        if self.random_start:
            if self.norm == "linf":
                delta = (torch.rand_like(x) * 2 - 1) * eps
            else:
                direction = torch.randn_like(x)
                radius = eps * torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)
                delta = direction / l2_norm(direction) * radius
        delta = self.project(x, delta, eps)
        for step in range(self.steps):
            delta.requires_grad_(True)
            value = self.value(x + delta, ctx)
            (grad,) = torch.autograd.grad(value.sum(), delta)
            if step == 0:
                self.check_gradient(grad)
            with torch.no_grad():
                if self.norm == "linf":
                    delta = delta + self.alpha * grad.sign()
                else:
                    delta = delta + self.alpha * grad / (l2_norm(grad) + 1e-12)
                delta = self.project(x, delta, eps)
        return x + delta

    def __repr__(self) -> str:
        return (
            f"PGD(norm={self.norm}, eps={self.eps}, alpha={self.alpha}, steps={self.steps}, "
            f"objective={self.objective}, proxy={self.proxy})"
        )
