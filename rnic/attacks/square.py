"""The Square attack (Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020) on the codec's REAL rounding: no gradient, hence no proxy."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.attacks import rng
from rnic.attacks.base import Attack
from rnic.attacks.objectives import Context
from rnic.attacks.threat import l2_norm
from rnic.coding import CODING_DEVICE, coder_on, compress_decompress, forward_is_decoded

# The paper's initial fraction of pixels in a square (its ImageNet defaults), and its schedule: p halves
# after these many queries out of 10000 (rescaled to the budget).
P_INIT = {"linf": 0.05, "l2": 0.1}
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# L-inf: redraw a square's signs (at most this often) while they would leave the image unchanged.
REDRAWS = 10


def p_fraction(p_init: float, query: int, queries: int) -> float:
    """The fraction of the image's pixels that the square at `query` (of `queries`) covers."""
    progress = int(query / queries * 10000)
    halvings = sum(progress > bound for bound in P_HALVINGS)
    return p_init / 2**halvings


def is_autoregressive(codec: nn.Module) -> bool:
    """Codecs with a context model, whose forward rounds y without its predicted means (round(y)) while
    the coder codes round(y - mean) + mean: only decoding shows what they really reconstruct."""
    return not forward_is_decoded(codec)


@torch.no_grad()
def real_forward(
    codec: nn.Module, x: Tensor, coder: nn.Module | None = None
) -> tuple[Tensor, dict[str, Tensor], int]:
    """(reconstruction in [0, 1], likelihoods, pixels) with the codec's real rounding.

    The eval-mode forward quantises exactly as the coder does, except for autoregressive codecs:
    those are compressed and decompressed by `coder` (the codec on the coding device, with its
    `update()` tables), and the coded rate is returned as one likelihood 2^-bpp per pixel, so that an
    objective's rate is the real bpp.
    """
    pixels = x.shape[-2] * x.shape[-1]
    if is_autoregressive(codec):
        x_hat, bpp = compress_decompress(coder if coder is not None else codec, x)
        per_pixel = torch.exp2(-bpp).to(device=x.device, dtype=x.dtype).view(-1, 1)
        return x_hat.to(x), {"coded": per_pixel.expand(-1, pixels)}, pixels
    x_hat, likelihoods, pixels = rd.forward_padded(codec, x)
    return x_hat.clamp(0, 1), likelihoods, pixels


@lru_cache(maxsize=64)
def _pseudo_gaussian(rows: int, cols: int) -> Tensor:
    """The paper's bump: concentric rectangles weighted 1 / (k + 1)^2, unit norm."""
    bump = torch.zeros(rows, cols, dtype=torch.float64)
    top, left = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        bump[max(top - k, 0) : top + k + 1, max(left - k, 0) : left + k + 1] += 1.0 / (k + 1) ** 2
    return bump / bump.norm().clamp_min(1e-12)


@lru_cache(maxsize=64)
def square_bump(side: int) -> Tensor:
    """The paper's L2 update for a square of `side`: a bump on one half, minus a bump on the other."""
    half = side // 2
    bump = torch.cat([_pseudo_gaussian(half, side), -_pseudo_gaussian(side - half, side)])
    return bump / bump.norm()


class Square(Attack):
    """Square attack: random square updates, each kept only if it raises the image's objective.

    The oracle is the objective on the codec's REAL reconstruction (`real_forward`: the eval-mode
    forward, or real coding for autoregressive codecs); the objective's clean reference is the real
    clean reconstruction too. No proxy is ever installed, so no proxy can mislead it.

    - linf: starts from vertical stripes of +-eps; each query sets a square to +-eps per channel.
    - l2 and mse: the paper's L2 version (a grid of +-bumps at the start; each query moves mass from a
      second square to a new bump in the first), with the threat's exact projection in place of
      rescaling and clipping (for mse, the projection on its L2 ball within the 16/255 box).

    The square's side follows the paper's schedule of the fraction p of pixels. `queries` counts the
    oracle calls per image on candidates (the start included; one more computes the clean reference).
    Each image draws from its own generator seeded alike, so its result does not depend on its batch.
    `history` holds the best value of each image after each query, (queries, B), of the last call.
    """

    gradient_free = True  # forward passes only: it also attacks coders without a gradient

    def __init__(
        self,
        codec: nn.Module,
        threat: str = "linf",
        eps: float | Tensor | None = None,
        queries: int = 1000,
        **kwargs,
    ):
        eps = self.bind_threat(threat, eps)
        if kwargs.get("proxy") not in (None, "none"):
            raise ValueError(
                f"attack.proxy={kwargs['proxy']!r}: Square queries the codec's real rounding and takes no "
                "proxy; set attack.proxy=none"
            )
        kwargs["proxy"] = "none"  # nothing is wrapped: the oracle sees the real quantisation
        super().__init__(codec, eps=eps, **kwargs)
        if int(queries) < 1:
            raise ValueError(f"attack.queries={queries} must be >= 1")
        self.queries = int(queries)
        self.history: Tensor | None = None
        self.coding_device = CODING_DEVICE  # not a setting: where it codes does not change the result
        self._coder: nn.Module | None = None

    @property
    def draws(self) -> int:
        """Behind a random defense (rnic.defenses), each oracle call averages this many draws (EOT), so
        that a lucky draw cannot pass for an improvement."""
        return int(getattr(self.codec, "eot_samples", 1)) if getattr(self.codec, "random", False) else 1

    @torch.no_grad()
    def query(self, x_adv: Tensor, ctx: Context) -> Tensor:
        """The objective of each image on its real reconstruction (mean over the draws)."""
        total = 0.0
        for _ in range(self.draws):
            x_hat, likelihoods, pixels = real_forward(self.codec, x_adv, self._coder)
            total = total + self.objective(x_hat, likelihoods, pixels, x_adv, ctx)
        return total / self.draws

    @torch.no_grad()
    def perturb(self, x: Tensor, ctx: Context, eps: Tensor) -> Tensor:
        self.threat_model.check(eps, x.shape)
        # The codec's current weights on the coding device (only autoregressive codecs are coded).
        self._coder = coder_on(self.codec, self.coding_device) if is_autoregressive(self.codec) else None
        try:
            return self.search(x, ctx, eps)
        finally:
            self._coder = None

    def search(self, x: Tensor, ctx: Context, eps: Tensor) -> Tensor:
        if ctx.clean is not None and self._coder is not None:
            # The clean reference from real decodes: an autoregressive codec's forward rounds otherwise (a
            # random defense's draws are averaged, as the base class's eot_clean does for the forward).
            draws = [real_forward(self.codec, x, self._coder)[0] for _ in range(self.draws)]
            ctx = replace(ctx, clean=torch.stack(draws).mean(0))
        generators = rng.image_generators(x.shape[0])  # small draws: on the CPU
        linf = self.threat_model.name == "linf"
        x_best = self.start_linf(x, eps, generators) if linf else self.start_l2(x, eps, generators)
        best = self.query(x_best, ctx)
        history = [best]
        for q in range(1, self.queries):
            if linf:
                x_new = self.propose_linf(
                    x, x_best, eps, generators, p_fraction(P_INIT["linf"], q, self.queries)
                )
            else:
                x_new = self.propose_l2(x, x_best, eps, generators, p_fraction(P_INIT["l2"], q, self.queries))
            value = self.query(x_new, ctx)
            better = value > best  # only improvements: each image's value never drops
            x_best = torch.where(better.view(-1, 1, 1, 1), x_new, x_best)
            best = torch.where(better, value, best)
            history.append(best)
        self.history = torch.stack(history)
        return x_best

    # L-inf version

    def start_linf(self, x: Tensor, eps: Tensor, generators: list[torch.Generator]) -> Tensor:
        channels, _, width = x.shape[1:]
        stripes = rng.signs(generators, (channels, 1, width), x) * eps
        return self.threat_model.project(x, x + stripes, eps)

    def propose_linf(
        self, x: Tensor, x_best: Tensor, eps: Tensor, generators: list[torch.Generator], p: float
    ) -> Tensor:
        channels, height, width = x.shape[1:]
        side = min(max(round(math.sqrt(p * height * width)), 1), height, width)
        delta = x_best - x
        for i, g in enumerate(generators):
            window = _window(g, height, width, side)
            current = x_best[i][window]
            for _ in range(REDRAWS):  # a square that changes nothing would waste the query
                values = rng.signs([g], (channels, 1, 1), x)[0] * eps[i]
                if bool(((x[i][window] + values).clamp(0, 1) - current).abs().max() >= 1e-7):
                    break
            delta[i][window] = values
        return self.threat_model.project(x, x + delta, eps)

    # L2 version (also mse)

    def start_l2(self, x: Tensor, eps: Tensor, generators: list[torch.Generator]) -> Tensor:
        channels, height, width = x.shape[1:]
        side = max(min(height, width) // 5, 1)
        top0, left0 = (height - side * (height // side)) // 2, (width - side * (width // side)) // 2
        delta = torch.zeros_like(x)
        for row in range(height // side):
            for col in range(width // side):
                top, left = top0 + row * side, left0 + col * side
                window = (slice(None), slice(top, top + side), slice(left, left + side))
                for i, g in enumerate(generators):
                    delta[i][window] += self._bump(g, side, x) * rng.signs([g], (channels, 1, 1), x)[0]
        radius = self.threat_model.radius(x, eps)
        return self.threat_model.project(x, x + delta / l2_norm(delta).clamp_min(1e-12) * radius, eps)

    def propose_l2(
        self, x: Tensor, x_best: Tensor, eps: Tensor, generators: list[torch.Generator], p: float
    ) -> Tensor:
        channels, height, width = x.shape[1:]
        side = max(round(math.sqrt(p * height * width)), 3)
        side = min(side + 1 - side % 2, height, width)  # odd, as the paper's
        radius = self.threat_model.radius(x, eps)
        delta = x_best - x
        for i, g in enumerate(generators):
            d = delta[i]
            first, second = _window(g, height, width, side), _window(g, height, width, side)
            in_first = d[first].flatten(1).norm(dim=1).view(-1, 1, 1)
            both = torch.zeros(1, height, width, dtype=x.dtype, device=x.device)
            both[first] = 1
            both[second] = 1
            in_both = (d * both).flatten(1).norm(dim=1).view(-1, 1, 1)
            # The new bump plus the square's old content, with the norm of both squares and the unspent
            # budget (shared over the channels): the paper's update.
            new = self._bump(g, side, x) * rng.signs([g], (channels, 1, 1), x)[0] + d[first] / (
                in_first + 1e-10
            )
            spare = (radius[i].square() - d.square().sum()).clamp_min(0) / channels
            new = new / new.flatten(1).norm(dim=1).view(-1, 1, 1) * (spare + in_both.square()).sqrt()
            d[second] = 0
            d[first] = new
        return self.threat_model.project(x, x + delta / l2_norm(delta).clamp_min(1e-12) * radius, eps)

    @staticmethod
    def _bump(g: torch.Generator, side: int, like: Tensor) -> Tensor:
        bump = square_bump(side)
        if bool(torch.rand((), generator=g) < 0.5):  # horizontal or vertical halves
            bump = bump.T
        return bump.to(device=like.device, dtype=like.dtype)


def _window(g: torch.Generator, height: int, width: int, side: int) -> tuple[slice, slice, slice]:
    """A random square of `side` inside the image, all channels."""
    top = int(torch.randint(0, height - side + 1, (), generator=g))
    left = int(torch.randint(0, width - side + 1, (), generator=g))
    return slice(None), slice(top, top + side), slice(left, left + side)
