"""`method=none` (clean training, the equal-compute control) and `method=noise` (Gaussian noise on
the inputs, for center smoothing)."""

from __future__ import annotations

import torch
from torch import Tensor

from rnic.attacks import Attack, NoAttack
from rnic.methods.base import Step, TrainingMethod, rd_step


class CleanTraining(TrainingMethod):
    """`none`: clean training; the attack validates only (the control of a study)."""

    name = "none"
    clean_without_attack = True

    def training_loss(self, module, x: Tensor) -> Step:
        return rd_step(module.codec, x, x, module.lmbda, module.metric)


class NoiseTraining(TrainingMethod):
    """`noise`: Gaussian noise of `sigma` on the first `ratio` of each batch, the clean source as the target:
    a codec that reconstructs well from noisy inputs, for center smoothing (rnic.defenses.smoothing). It
    needs no attack (attack=none); with one, the attack validates only."""

    name = "noise"
    needs_attack = False

    def __init__(self, attack: Attack, sigma: float = 0.05, **kwargs):
        super().__init__(attack, **kwargs)
        if not float(sigma) > 0:
            raise ValueError(f"method.sigma={sigma} must be > 0 (the noise std of method=noise)")
        self.sigma = float(sigma)
        if isinstance(attack, NoAttack):
            self.validate = False  # no attack to validate under

    def training_loss(self, module, x: Tensor) -> Step:
        n = self.count(x.shape[0])
        generator = torch.Generator(device=x.device).manual_seed(
            self.seed(module.global_step, module.global_rank) or 0
        )
        noise = torch.randn(x[:n].shape, generator=generator, device=x.device, dtype=x.dtype)
        step = rd_step(module.codec, torch.cat([x[:n] + self.sigma * noise, x[n:]]), x, module.lmbda,
                       module.metric)  # fmt: skip
        step.logs["train/noisy_images"] = float(n)
        return step

    def __repr__(self) -> str:
        return f"NoiseTraining(sigma={self.sigma}, ratio={self.ratio})"
