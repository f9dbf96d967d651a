"""The threshold attack of Chen & Ma, "Towards Robust Neural Image Compression", as their public code
runs it (attack_rd.py, `attack_fgsm`), with each of its choices also available as an option."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from rnic.attacks import rng
from rnic.attacks.base import Attack, zero_gradient, zero_gradient_causes
from rnic.attacks.objectives import Context, distortion

SCHEDULES = ("paper", "thirds")
CLIPS = ("pass", "clamp")
SELECTIONS = ("last", "best")
PAPER_GAMMA = 0.33  # MultiStepLR(optimizer, [1, 2, 3], gamma=0.33) in the paper's code


class _PassingClip(torch.autograd.Function):
    """clamp(x, low, high) whose gradient still flows where a descent step would move a clipped sample
    back inside (the paper's Low_bound / Up_bound): a clipped sample is never frozen."""

    @staticmethod
    def forward(ctx, x, low, high):
        ctx.save_for_backward(x, torch.as_tensor(low, dtype=x.dtype), torch.as_tensor(high, dtype=x.dtype))
        return torch.clamp(x, low, high)

    @staticmethod
    def backward(ctx, grad):
        x, low, high = ctx.saved_tensors
        passes = ((x >= low) | (grad < 0)) & ((x <= high) | (grad > 0))
        return grad * passes, None, None


def paper_lr(lr: float, step: int, steps: int) -> float:
    """The paper's learning rate at optimizer step `step` (0-based): its scheduler steps after every step
    with `step % (steps // 3) == 0`, step 0 included, so the full rate serves the first step only."""
    period = max(1, steps // 3)
    return lr * PAPER_GAMMA ** min(math.ceil(step / period), 3)


class ThresholdAttack(Attack):
    """Adam on a perturbation `n`, x' = clip(x + clip(n, +-box), 0, 1), with a threshold switch.

    Per image and step: while the input distortion D(x', x) exceeds `eps` (MSE, default 1e-4, i.e. 40 dB
    input PSNR; or 1 - MS-SSIM), minimise it; otherwise maximise the objective (by default the distortion
    between the adversarial and the clean reconstruction).

    Defaults follow the paper's code: `init=0` (the noise starts at zero), `schedule="paper"` (lr for the
    first step, then lr x 0.33, 0.33^2, 0.33^3 from each third on), `clip="pass"` (the clips pass the
    gradient back), `select="last"` (the last iterate, whose input distortion may sit slightly above `eps`:
    the switch oscillates around it). Options: `schedule="thirds"` (lr / 3 at each third), `clip="clamp"`
    (torch.clamp, zero gradient at a clipped sample), `select="best"` (the best iterate within `eps`),
    `init>0` (a uniform random start in +-init, redrawn for each of `restarts`).
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
        init: float = 0.0,
        schedule: str = "paper",
        clip: str = "pass",
        select: str = "last",
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
        if not init >= 0:
            raise ValueError(f"attack.init={init} must be >= 0")
        for key, value, allowed in (("schedule", schedule, SCHEDULES), ("clip", clip, CLIPS),
                                    ("select", select, SELECTIONS)):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"attack.{key}={value!r} is unknown; choose one of: {', '.join(allowed)}")
        if int(restarts) > 1 and (init == 0 or select == "last"):
            raise ValueError(
                f"attack.restarts={restarts} needs random starts that can differ and a choice among them: "
                "set attack.init > 0 and attack.select=best"
            )
        self.input_metric = input_metric
        self.box = box
        self.lr = lr
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.init = init
        self.schedule = schedule
        self.clip = clip
        self.select = select

    def adversarial(self, x: Tensor, noise: Tensor) -> Tensor:
        if self.clip == "pass":
            return _PassingClip.apply(x + _PassingClip.apply(noise, -self.box, self.box), 0.0, 1.0)
        return (x + noise.clamp(-self.box, self.box)).clamp(0, 1)

    def learning_rate(self, step: int) -> float:
        if self.schedule == "paper":
            return paper_lr(self.lr, step, self.steps)
        thirds = sum(step >= max(1, k * self.steps // 3) for k in (1, 2))
        return self.lr / 3**thirds

    def perturb(self, x: Tensor, ctx: Context, eps: Tensor) -> Tensor:
        eps = eps.flatten()
        best = x.clone()
        best_value = torch.full((x.shape[0],), -torch.inf, device=x.device)
        generators = rng.image_generators(x.shape[0])
        for _ in range(self.restarts):
            start = (
                (rng.rand(generators, x.shape[1:], x) * 2 - 1) * self.init
                if self.init
                else torch.zeros_like(x)
            )
            noise = start.requires_grad_(True)
            optimizer = torch.optim.Adam([noise], lr=self.lr)
            passes = self.steps + (self.select == "best")  # best: one more pass scores the final iterate
            for step in range(passes):
                x_adv = self.adversarial(x, noise)
                d_in = distortion(x_adv, x, self.input_metric)
                value = self.value(x_adv, ctx)
                last = x_adv.detach()
                if self.select == "best":
                    with torch.no_grad():  # keep the best admissible iterate of each image
                        better = (d_in <= eps) & (value > best_value)
                        best[better] = x_adv[better]
                        best_value[better] = value[better]
                if step == self.steps:
                    break
                # Differentiated as the value to maximise (the objective's clamp passes gradients by the
                # ascent's sign), then negated for Adam's descent.
                ascent = torch.where(d_in > eps, -d_in, value).sum()
                (grad,) = torch.autograd.grad(ascent, noise)
                grad = -grad
                if step == 0 and (self.init or self.proxy == "none"):
                    self.check_gradient(grad)
                elif step == 0 and (stuck := int(zero_gradient(grad).sum())):
                    # The paper's zero start: the recipe returns what the paper's loop would, not silently.
                    warnings.warn(
                        f"ThresholdAttack: the gradient is exactly zero at the zero start for {stuck} "
                        "image(s), which come back unchanged: " + zero_gradient_causes(self.proxy),
                        stacklevel=4,
                    )
                for group in optimizer.param_groups:
                    group["lr"] = self.learning_rate(step)
                noise.grad = grad
                optimizer.step()
        # The paper evaluates the image of its last iteration (computed before that iteration's update).
        return best if self.select == "best" else last
