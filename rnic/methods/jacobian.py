"""`method=jacobian`: the clean RD loss plus an input-gradient (Jacobian) penalty, the regulariser of
Cao et al.'s robust teacher: train a codec with it, then distil it into the student with
`method=teacher method.teacher=<its checkpoint>`."""

from __future__ import annotations

import torch
from torch import Tensor

from rnic import rd
from rnic.attacks import Attack, quantization_proxy
from rnic.attacks.objectives import rd_distortion
from rnic.methods.base import Step, TrainingMethod, rd_step


class JacobianPenalty(TrainingMethod):
    """`jacobian`: RD loss on the clean batch + beta * lmbda * D(x_hat(x + h v), x_hat(x)) on its first
    `ratio`, D the training metric's distortion (255^2 MSE or 1 - MS-SSIM), v a random sign per pixel
    (the image kept in [0, 1]) and h = `jacobian_step`. Under MSE, a finite-difference estimate of
    h^2 ||J v||^2 / pixels, whose mean over v is the squared Frobenius norm of the reconstruction's input
    Jacobian J (Hoffman et al.'s random projection), scaled as the distortion a random L-inf
    perturbation of size h adds to first order. Both reconstructions skip the quantisation (the smooth
    transforms' Jacobian, which gradient attacks differentiate through) and both take the gradient.

    It needs no attack (with one, the attack validates only) and costs 1 + 2 x ratio passes per step,
    every one counted by the hooks (a double backward would hide its cost from them)."""

    name = "jacobian"
    needs_attack = False

    def __init__(
        self, attack: Attack, beta: float = 1.0, jacobian_step: float = 4 / 255, metric: str = "mse", **kwargs
    ):
        super().__init__(attack, **kwargs)
        if not 0 < float(jacobian_step) <= 1:
            raise ValueError(
                f"method.jacobian_step={jacobian_step} must be in (0, 1] (pixel values in [0, 1])"
            )
        if not float(beta) >= 0:
            raise ValueError(f"method.beta={beta} must be >= 0")
        self.beta = float(beta)
        self.jacobian_step = float(jacobian_step)
        self.metric = metric

    def term(self, module, x: Tensor) -> Tensor:
        """Per image: lmbda * D(x_hat(x + h v), x_hat(x)), no quantisation in either."""
        signs = torch.randint(0, 2, x.shape, device=x.device, dtype=x.dtype) * 2 - 1
        with quantization_proxy(module.codec, "skip"):
            moved = rd.forward_padded(module.codec, (x + self.jacobian_step * signs).clamp(0, 1))[0]
            still = rd.forward_padded(module.codec, x)[0]
        return module.lmbda * rd_distortion(moved, still, self.metric)

    def training_loss(self, module, x: Tensor) -> Step:
        n = self.count(x.shape[0])
        step = rd_step(module.codec, x, x, module.lmbda, module.metric)
        if n:
            term = self.term(module, x[:n])
            step.loss = step.loss + self.beta * term.mean()
            step.logs["train/jacobian_term"] = float(term.detach().mean())
        return step

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", beta={self.beta}, jacobian_step={self.jacobian_step})"
