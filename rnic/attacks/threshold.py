"""The threshold attack of Chen & Ma, "Towards Robust Neural Image Compression"."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnic.attacks import rng
from rnic.attacks.base import Attack
from rnic.attacks.objectives import Context, distortion


class ThresholdAttack(Attack):
    """Adam on a perturbation `n`, x' = clip(x + clip(n, +-box), 0, 1), with a threshold switch.

    Per image and step: while the input distortion D(x', x) exceeds `eps` (MSE, default 1e-4,
    i.e. 40 dB input PSNR; or 1 - MS-SSIM), minimise it; otherwise maximise the objective (by
    default the distortion between the adversarial and the clean reconstruction). The learning
    rate is divided by 3 at each third of the steps. The result is the best iterate whose input
    distortion is within `eps`, over `restarts` random starts.
    """

    def __init__(
        self,
        codec: nn.Module,
        eps: float | Tensor = 1e-4,
        input_metric: str = "mse",
        box: float = 16 / 255,
        lr: float = 0.01,
        steps: int = 1000,
        restarts: int = 1,
        init: float = 1 / 255,
        **kwargs,
    ):
        super().__init__(codec, eps=eps, **kwargs)
        if input_metric not in ("mse", "ms-ssim"):
            raise ValueError(f"attack.input_metric={input_metric!r} is unknown; choose mse or ms-ssim")
        for key, value in (("box", box), ("lr", lr)):
            if not value > 0:
                raise ValueError(f"attack.{key}={value} must be > 0")
        for key, value in (("steps", steps), ("restarts", restarts)):
            if int(value) < 1:
                raise ValueError(f"attack.{key}={value} must be >= 1")
        self.input_metric = input_metric
        self.box = box
        self.lr = lr
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.init = init

    def perturb(self, x: Tensor, ctx: Context, eps: Tensor) -> Tensor:
        eps = eps.flatten()
        best = x.clone()
        best_value = torch.full((x.shape[0],), -torch.inf, device=x.device)
        thirds = [max(1, self.steps // 3), max(1, 2 * self.steps // 3)]
        generators = rng.image_generators(x.shape[0])
        for _ in range(self.restarts):
            noise = ((rng.rand(generators, x.shape[1:], x) * 2 - 1) * self.init).requires_grad_(True)
            optimizer = torch.optim.Adam([noise], lr=self.lr)
            schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=thirds, gamma=1 / 3)
            for step in range(self.steps + 1):  # the last pass only scores the final iterate
                x_adv = (x + noise.clamp(-self.box, self.box)).clamp(0, 1)
                d_in = distortion(x_adv, x, self.input_metric)
                value = self.value(x_adv, ctx)
                with torch.no_grad():  # keep the best admissible iterate of each image
                    better = (d_in <= eps) & (value > best_value)
                    best[better] = x_adv[better]
                    best_value[better] = value[better]
                if step == self.steps:
                    break
                over = d_in > eps
                loss = torch.where(over, d_in, -value).sum()
                (grad,) = torch.autograd.grad(loss, noise)
                if step == 0:
                    self.check_gradient(grad)
                noise.grad = grad
                optimizer.step()
                schedule.step()
        return best
