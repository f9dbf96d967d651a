"""Threat models: what an attacker may do to an image, in one place for every attack.

A threat model is a set of admissible adversarial images around the source x, always inside [0, 1]:

- `linf`: |x_adv - x| <= eps per sample.
- `l2`: ||x_adv - x||_2 <= eps per image (optionally also |x_adv - x| <= box).
- `mse`: MSE(x_adv, x) <= eps, within the L-inf box |x_adv - x| <= 16/255 of Chen & Ma's attack: an
  L2 ball of radius sqrt(eps * C * H * W) intersected with the box.

Attacks only choose how to search the set; `Threat.project` maps any point to the nearest admissible one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnic.attacks import rng
from rnic.budgets import parse_fraction

THREATS = ("linf", "l2", "mse")
MSE_BOX = 16 / 255  # the paper's L-inf box around its MSE budget
DEFAULT_EPS = {
    "linf": 4 / 255,
    # The L2 norm of a perturbation at the mse default (40 dB input PSNR) on a Kodak image (768x512), the
    # usual test set: there the two defaults agree. The same radius is a larger per-sample budget on a
    # smaller image; use the mse threat for a budget that does not depend on the image size.
    "l2": (1e-4 * 3 * 768 * 512) ** 0.5,
    "mse": 1e-4,
}
BISECTION_STEPS = 40  # halvings of the ball's scale factor: beyond float32 resolution
# Radii are aimed this much (relative) inside the ball: x + d in float32 moves the norm by about 1e-7.
RADIUS_MARGIN = 1e-6


def l2_norm(delta: Tensor) -> Tensor:
    """The L2 norm of each image's tensor, as (B, 1, 1, 1)."""
    return delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.dim() - 1))


def project_ball_box(v: Tensor, radius: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The point nearest to `v` in {||d||_2 <= radius} ∩ {lo <= d <= hi}, per image (lo <= 0 <= hi).

    The KKT conditions give d(mu) = clip(v / (1 + mu), lo, hi) with mu >= 0, and mu = 0 or ||d|| = radius;
    ||clip(t v, lo, hi)|| grows with t = 1 / (1 + mu), so the answer is the largest feasible t in (0, 1],
    found by bisection for every image at once.
    """

    def clip(t):
        return torch.maximum(torch.minimum(t * v, hi), lo)

    d = clip(1.0)
    outside = l2_norm(d) > radius
    if not bool(outside.any()):
        return d
    # ||clip(t v)|| <= t ||v||, so t = radius / ||v|| is feasible; t = 1 is not (for the images outside).
    t_lo = (radius / l2_norm(v).clamp_min(torch.finfo(v.dtype).tiny)).clamp(max=1.0)
    t_hi = torch.ones_like(t_lo)
    for _ in range(BISECTION_STEPS):
        t = (t_lo + t_hi) / 2
        feasible = l2_norm(clip(t)) <= radius
        t_lo = torch.where(feasible, t, t_lo)
        t_hi = torch.where(feasible, t_hi, t)
    return torch.where(outside, clip(t_lo), d)  # the feasible end of the bracket


def _show(eps: float | Tensor):
    return eps.flatten().tolist() if isinstance(eps, Tensor) else eps


class Threat:
    """One threat model: `name` in THREATS; `box` an L-inf bound on top of an l2 or mse ball
    (default: 16/255 for mse, none for l2; linf is its own box).

    `eps` is always a (B, 1, 1, 1) tensor here: one budget per image.
    """

    def __init__(self, name: str, box: float | None = None):
        if name not in THREATS:
            raise ValueError(f"attack.threat={name!r} is unknown; choose one of: {', '.join(THREATS)}")
        if box is None and name == "mse":
            box = MSE_BOX
        if box is not None and not box > 0:
            raise ValueError(f"attack.box={box} must be > 0")
        self.name = name
        self.box = None if name == "linf" else box

    def budget(self, eps: float | Tensor | None) -> float | Tensor:
        """`eps`, or this threat's default budget when None; refused if this threat cannot mean it."""
        eps = DEFAULT_EPS[self.name] if eps is None else parse_fraction(eps)
        self.check(eps)
        return eps

    def check(self, eps: float | Tensor, shape: tuple[int, ...] | None = None) -> None:
        """Refuse a budget this threat cannot mean: <= 0, beyond the [0, 1] range, or (l2, given the
        images' shape) beyond sqrt(C * H * W), the norm of the largest possible perturbation."""
        budget = torch.as_tensor(eps, dtype=torch.float64).flatten()
        if not bool((budget > 0).all()):
            raise ValueError(f"attack.eps={_show(eps)} must be > 0")
        if self.name in ("linf", "mse") and bool((budget > 1).any()):
            what = "an L-inf budget" if self.name == "linf" else "an MSE budget on [0, 1] images"
            raise ValueError(f"attack.eps={_show(eps)} is larger than the image allows: {what} is at most 1")
        if self.name == "l2" and shape is not None:
            largest = float(torch.tensor(shape[1:]).prod()) ** 0.5
            if bool((budget > largest).any()):
                raise ValueError(
                    f"attack.eps={_show(eps)} is larger than the image allows: the largest possible "
                    f"perturbation of a {'x'.join(map(str, shape[1:]))} image has L2 norm {largest:.4g}"
                )

    def radius(self, x: Tensor, eps: Tensor) -> Tensor:
        """The per-image size of the set: eps for linf and l2, the L2 radius sqrt(eps * CHW) for mse."""
        if self.name == "mse":
            return (eps * x[0].numel()).sqrt()
        return eps

    def bounds(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample bounds (lo, hi) on the perturbation: the image range and the L-inf box."""
        lo, hi = -x, 1 - x
        box = eps if self.name == "linf" else self.box
        if box is not None:
            lo, hi = torch.clamp(lo, min=-box), torch.clamp(hi, max=box)
        return lo, hi

    def project(self, x: Tensor, x_adv: Tensor, eps: Tensor) -> Tensor:
        """The admissible image nearest to `x_adv` (exact Euclidean projection onto the set)."""
        lo, hi = self.bounds(x, eps)
        if self.name == "linf":  # a box: the projection clips each sample
            delta = torch.maximum(torch.minimum(x_adv - x, hi), lo)
        else:
            delta = project_ball_box(x_adv - x, self.radius(x, eps) * (1 - RADIUS_MARGIN), lo, hi)
        return (x + delta).clamp(0, 1)  # x + delta is in [0, 1] up to float rounding

    def contains(self, x: Tensor, x_adv: Tensor, eps: Tensor, tol: float = 1e-6) -> Tensor:
        """Per image: is `x_adv` admissible? Samples within [0, 1] exactly; L-inf bounds within `tol`
        (absolute, about float32's spacing near 1); L2 norm and MSE within `tol` relative."""
        delta = (x_adv - x).flatten(1)
        flat = x_adv.flatten(1)
        ok = (flat >= 0).all(1) & (flat <= 1).all(1)
        linf = delta.abs().amax(1)
        if self.name == "linf":
            return ok & (linf <= eps.flatten() + tol)
        if self.box is not None:
            ok &= linf <= self.box + tol
        if self.name == "l2":
            return ok & (delta.norm(dim=1) <= eps.flatten() * (1 + tol))
        return ok & (delta.square().mean(1) <= eps.flatten() * (1 + tol))

    def random_start(self, x: Tensor, eps: Tensor, generators: list[torch.Generator]) -> Tensor:
        """A random admissible image: uniform in the L-inf box, or on the L2 sphere, then projected."""
        shape = tuple(x.shape[1:])
        if self.name == "linf":
            delta = (2 * rng.rand(generators, shape, x) - 1) * eps
        else:
            direction = rng.randn(generators, shape, x)
            delta = direction / l2_norm(direction) * self.radius(x, eps)
        return self.project(x, x + delta, eps)

    def ascent(self, grad: Tensor) -> Tensor:
        """The steepest ascent direction of unit size: the sign (L-inf), or the normalised gradient."""
        if self.name == "linf":
            return grad.sign()
        return grad / l2_norm(grad).clamp_min(1e-12)

    def __repr__(self) -> str:
        return f"Threat({self.name!r}, box={self.box})"
