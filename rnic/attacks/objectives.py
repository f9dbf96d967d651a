"""What an attack maximises, per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnic import rd

KINDS = ("distortion", "targeted", "rate", "rd")
REFERENCES = ("source", "clean", "input")
DISTORTIONS = ("mse", "ms-ssim")


def distortion(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """Per-image MSE, or 1 - MS-SSIM."""
    return rd.mse(a, b) if metric == "mse" else 1 - rd.ms_ssim(a, b)


def rd_distortion(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """Per image, the D of the RD loss, in lmbda's units: 255^2 MSE, or 1 - MS-SSIM."""
    return (255**2 if metric == "mse" else 1.0) * distortion(a, b, metric)


class DeliveredRange(torch.autograd.Function):
    """x_hat.clamp(0, 1), as the decoder delivers it, for an objective that is MAXIMISED: a clamped sample
    still passes the gradient that moves it back into [0, 1] (the paper's Low_bound / Up_bound), so a
    codec whose output saturates (a weak or untrained one) is not frozen by the clamp."""

    @staticmethod
    def forward(ctx, x_hat):
        ctx.save_for_backward(x_hat)
        return x_hat.clamp(0, 1)

    @staticmethod
    def backward(ctx, grad):
        (x_hat,) = ctx.saved_tensors
        return grad * (((x_hat >= 0) | (grad > 0)) & ((x_hat <= 1) | (grad < 0)))


@dataclass
class Context:
    """What the objective compares against, fixed for one attack call."""

    source: Tensor
    clean: Tensor | None = None  # the clean image's reconstruction (real rounding)
    target: Tensor | None = None
    mask: Tensor | None = None


class Objective:
    """The attacker's goal, as a per-image value to maximise.

    - `distortion`: the reconstruction's distortion against `reference`: the `source` image,
      its `clean` reconstruction, or the adversarial `input` itself.
    - `targeted`: drive the reconstruction to a target image (inside an optional mask).
    - `rate`: the estimated bits per pixel.
    - `rd`: `lmbda * D + bpp`, D against `reference` (255^2 * MSE or 1 - MS-SSIM).
    """

    def __init__(
        self,
        kind: str = "distortion",
        reference: str = "clean",
        distortion: str = "mse",
        lmbda: float | None = None,
    ):
        for key, value, allowed in (
            ("kind", kind, KINDS),
            ("reference", reference, REFERENCES),
            ("distortion", distortion, DISTORTIONS),
        ):
            if value not in allowed:
                raise ValueError(
                    f"attack.objective.{key}={value!r} is unknown; choose one of: {', '.join(allowed)}"
                )
        if kind == "rd" and not (lmbda and lmbda > 0):
            raise ValueError(f"attack.objective.lmbda={lmbda} must be > 0 for the rate-distortion objective")
        self.kind = kind
        self.reference = reference
        self.metric = distortion
        self.lmbda = lmbda

    @torch.no_grad()
    def context(self, codec: nn.Module, x: Tensor, target: Tensor | None, mask: Tensor | None) -> Context:
        if self.kind == "targeted" and target is None:
            raise ValueError("attack.objective.kind=targeted needs a target image")
        clean = None
        if self.reference == "clean" and self.kind in ("distortion", "rd"):
            clean = rd.forward_padded(codec, x)[0].clamp(0, 1)
        return Context(source=x, clean=clean, target=target, mask=mask)

    def __call__(
        self, x_hat: Tensor, likelihoods: dict, num_pixels: int, x_adv: Tensor, ctx: Context
    ) -> Tensor:
        if self.kind == "rate":
            return rd.estimated_bpp(likelihoods, num_pixels)
        # The decoder delivers its reconstruction clamped to [0, 1] (as the paper's attack measures it):
        # distortion the clamp removes is no damage, and an objective on the raw output chases it.
        x_hat = DeliveredRange.apply(x_hat)
        if self.kind == "targeted":
            mask = ctx.mask if ctx.mask is not None else 1.0
            return -distortion(x_hat * mask, ctx.target * mask, self.metric)
        reference = {"source": ctx.source, "clean": ctx.clean, "input": x_adv}[self.reference]
        d = distortion(x_hat, reference, self.metric)
        if self.kind == "distortion":
            return d
        scale = 255**2 if self.metric == "mse" else 1.0
        return self.lmbda * scale * d + rd.estimated_bpp(likelihoods, num_pixels)

    def __repr__(self) -> str:
        extra = f", lmbda={self.lmbda}" if self.kind == "rd" else ""
        return f"Objective({self.kind}, reference={self.reference}, distortion={self.metric}{extra})"
