"""The attack interface: `x_adv = attack(x)`, torchattacks-style, independent of Lightning."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import replace

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.attacks.objectives import Context, Objective
from rnic.attacks.proxy import check_proxy, quantization_proxy
from rnic.attacks.threat import Threat
from rnic.budgets import FRACTION_KEYS, format_budget


class ZeroGradientError(RuntimeError):
    """The attack's gradient is exactly zero: it cannot move."""


def check_budget(value: float | Tensor, name: str) -> Tensor:
    budget = torch.as_tensor(value, dtype=torch.float32).flatten()
    if not bool((budget > 0).all()):
        raise ValueError(f"attack.{name}={value} must be > 0")
    return budget


def per_image(value: float | Tensor, x: Tensor, name: str) -> Tensor:
    """A budget as a (B, 1, 1, 1) tensor: one number for the batch, or one per image."""
    budget = check_budget(value, name).to(device=x.device, dtype=x.dtype)
    if budget.numel() == 1:
        budget = budget.expand(x.shape[0])
    if budget.numel() != x.shape[0]:
        raise ValueError(f"attack.{name} has {budget.numel()} values for a batch of {x.shape[0]} images")
    return budget.view(-1, 1, 1, 1)


# How far (in 8-bit levels) a perturbation may fall short of a level and still reach it: float32
# arithmetic leaves a perturbation of exactly k levels at k - 1e-5 or so.
LEVEL_TOLERANCE = 1e-3


def to_8bit(x: Tensor, x_adv: Tensor) -> Tensor:
    """The adversarial image as 8-bit samples (what a PNG delivers), losing as little of the
    perturbation as the budgets allow.

    Each sample's perturbation is rounded to the nearest level, then (per image) capped at the
    whole levels of its largest sample (so no L-inf budget the unrounded image met is exceeded;
    a sample at an L-inf boundary of k/255 keeps all k levels), then, where rounding up made the
    image's L2 norm larger than before, the round-ups that gained the most are taken back until it is
    not (so no L2 or MSE budget is exceeded either).
    """
    source = torch.round(x * 255)
    delta = x_adv * 255 - source  # in levels
    magnitude = delta.abs()
    cap = torch.floor(magnitude.flatten(1).amax(1) + LEVEL_TOLERANCE).view(-1, *[1] * (x.dim() - 1))
    down = torch.floor(magnitude + LEVEL_TOLERANCE).clamp(max=cap)
    nearest = torch.minimum(torch.floor(magnitude + 0.5), cap)
    # Squared-norm excess of nearest rounding over the unrounded perturbation, per image (float64:
    # sums over a megapixel image must not hide the few levels that decide).
    unrounded = magnitude.double().square().flatten(1).sum(1)
    excess = nearest.double().square().flatten(1).sum(1) - unrounded
    gain = (nearest.double().square() - down.double().square()).flatten(1)  # what taking one back saves
    rounded_up = (nearest > down).flatten(1)
    # Take back the round-ups that moved furthest past the unrounded value first.
    overshoot = torch.where(rounded_up, (nearest - magnitude).flatten(1), -1.0)
    order = overshoot.argsort(dim=1, descending=True)
    saved = torch.cumsum(torch.gather(gain * rounded_up, 1, order), dim=1)
    # A hair more than the excess, so float32 images cannot land a ulp outside an L2 ball.
    target = excess + 1e-6 * unrounded + 1e-3
    needed = (saved - gain.gather(1, order) * rounded_up.gather(1, order)) < target[:, None]
    take_back = torch.zeros_like(rounded_up).scatter(1, order, needed & rounded_up.gather(1, order))
    magnitude_8bit = torch.where(take_back.view_as(nearest), down, nearest)
    levels = source + torch.sign(delta) * magnitude_8bit
    return levels.clamp(0, 255) / 255  # exactly what decoding the 8-bit PNG gives


def draws_of(codec: nn.Module) -> int:
    """How many draws an attack averages over (EOT): the codec's `eot_samples` behind a random defense."""
    return int(getattr(codec, "eot_samples", 1)) if getattr(codec, "random", False) else 1


@torch.no_grad()
def eot_clean(codec: nn.Module, x: Tensor, ctx: Context) -> Context:
    """Behind a random defense, the clean reconstruction as the mean over the EOT draws (as Square takes
    it), not the one draw the objective's context made."""
    if ctx.clean is None or draws_of(codec) == 1:
        return ctx
    draws = [rd.forward_padded(codec, x)[0].clamp(0, 1) for _ in range(draws_of(codec))]
    return replace(ctx, clean=torch.stack(draws).mean(0))


def zero_gradient(grad: Tensor) -> Tensor:
    """Per image: whether the attack's gradient is exactly zero everywhere."""
    return grad.flatten(1).abs().amax(1) == 0


def zero_gradient_causes(proxy: str | None) -> str:
    """What makes an attack's gradient exactly zero, and what to do about it."""
    rounding = (
        "with proxy='none' the entropy models round with torch.round (use attack.proxy=ste, noise or "
        "skip), or "
        if proxy == "none"
        else ""
    )
    return (
        f"{rounding}the attack starts at a stationary point (at the source, a forward that reproduces the "
        "clean reconstruction, as under proxy=ste or in the codecs that round inside their forward: "
        "checkerboard, ELIC, variable-rate, leaves the distortion against it flat: start at random, "
        "attack.random_start=true for PGD, attack.init > 0 for the threshold attack), or the codec's "
        "reconstruction ignores its input (untrained or collapsed weights)."
    )


class Attack:
    """Base class: `attack(x)` returns adversarial images in [0, 1], same shape as `x`.

    Subclasses implement `perturb(x, ctx, eps)`. Gradients are taken with respect to the
    perturbation only (`torch.autograd.grad`): the codec's parameters never get `.grad`.
    The codec runs in eval mode, with `proxy` standing in for its rounding.
    Capabilities are class attributes: `gradient_free` (forward passes only: it can attack a coder
    without a gradient, such as a classical one).
    """

    gradient_free = False

    def bind_threat(self, threat: str, eps: float | Tensor | None) -> float | Tensor:
        """For an attack with a threat model: keep `threat` (the setting) and its `threat_model` (a
        Threat: projection, radius, checks); returns the budget (the threat's default for eps=None)."""
        self.threat = threat
        self.threat_model = Threat(threat)
        return self.threat_model.budget(eps)

    def __init__(
        self,
        codec: nn.Module,
        eps: float | Tensor = 8 / 255,
        objective: Objective | None = None,
        proxy: str = "skip",
        round_8bit: bool = False,
        seed: int | None = 0,
    ):
        self.codec = codec
        self.eps = eps
        self.objective = objective if objective is not None else Objective()
        self.proxy = check_proxy(proxy)
        self.round_8bit = round_8bit
        self.seed = seed
        check_budget(eps, "eps")  # a bad budget fails here, before any attack

    def __call__(
        self,
        x: Tensor,
        target: Tensor | None = None,
        mask: Tensor | None = None,
        eps: float | Tensor | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """Adversarial versions of `x`; `eps` and `seed` override the attack's own for this call."""
        if target is not None and target.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"attack target is {tuple(target.shape[-2:])}, the images are {tuple(x.shape[-2:])}"
            )
        eps = per_image(self.eps if eps is None else eps, x, "eps")
        seed = self.seed if seed is None else seed
        devices = [x.device] if x.device.type == "cuda" else []
        with (
            rd.evaluating(self.codec),
            torch.random.fork_rng(devices=devices, enabled=seed is not None),
            torch.enable_grad(),
        ):
            if seed is not None:
                torch.manual_seed(seed)
            ctx = eot_clean(self.codec, x, self.objective.context(self.codec, x, target, mask))
            with quantization_proxy(self.codec, self.proxy):
                x_adv = self.perturb(x.detach(), ctx, eps)
        x_adv = x_adv.detach().clamp(0, 1)
        if not self.round_8bit:
            return x_adv
        if not torch.equal(torch.round(x * 255) / 255, x):
            # Rounding would move untouched samples of a finer-grained source and could break the budget.
            warnings.warn(
                "attack.round_8bit: the source is not 8-bit; the result is not rounded", stacklevel=2
            )
            return x_adv
        return to_8bit(x, x_adv)

    def perturb(self, x: Tensor, ctx: Context, eps: Tensor) -> Tensor:
        raise NotImplementedError

    def value(self, x_adv: Tensor, ctx: Context) -> Tensor:
        """The objective of each image, through the codec's forward under the proxy; behind a random
        defense (rnic.defenses), averaged over the codec's `eot_samples` draws (EOT)."""
        draws = draws_of(self.codec)
        total = 0.0
        for _ in range(draws):
            x_hat, likelihoods, num_pixels = rd.forward_padded(self.codec, x_adv)
            total = total + self.objective(x_hat, likelihoods, num_pixels, x_adv, ctx)
        return total / draws

    def check_gradient(self, grad: Tensor) -> None:
        dead = zero_gradient(grad)
        if bool(dead.any()):
            raise ZeroGradientError(
                f"{type(self).__name__}: the gradient is exactly zero for {int(dead.sum())} image(s): "
                + zero_gradient_causes(self.proxy)
            )

    def settings(self) -> dict:
        """Every constructor argument of the attack (but the codec), read back from the attribute
        of the same name: a subclass that does not keep one fails here, so none can be forgotten."""
        names = {}
        for cls in reversed(type(self).__mro__):
            init = cls.__dict__.get("__init__")
            if init is None or cls is object:
                continue
            for name, param in inspect.signature(init).parameters.items():
                if name not in ("self", "codec") and param.kind not in (
                    param.VAR_KEYWORD,
                    param.VAR_POSITIONAL,
                ):
                    names[name] = None
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        def show(key, value):
            if key in FRACTION_KEYS and isinstance(value, float):
                return format_budget(value)  # 8/255 rather than 0.03137254901960784
            return repr(value.tolist() if isinstance(value, Tensor) else value)

        args = ", ".join(f"{k}={show(k, v)}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


class NoAttack(Attack):
    """The identity: clean baselines through the same pipeline."""

    gradient_free = True

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        return x.detach().clone()  # no codec pass needed
