"""A certified bound on the RATE of a randomised encoder, by percentile smoothing (Chiang, Curry, Abdelkader,
Kumar, Dickerson & Goldstein, "Detection as Regression: Certified Object Detection by Median Smoothing",
NeurIPS 2020, Theorem 1; the Lipschitz lemma is Salman et al., "Provably Robust Deep Learning via
Adversarially Trained Smoothed Classifiers", NeurIPS 2019, Lemma 2).

The encoder `defense=noise` codes ONE noisy copy x + n, n ~ N(0, sigma^2 I), with the real entropy coder:
its rate f(x + n), the bits of its stream per pixel, is random. For any real f and any t, the function
x -> Phi^-1(P(f(x + n) <= t)) is 1/sigma-Lipschitz; so P(f(x' + n) <= t) >= q for every ||x' - x||_2 <= eps
as soon as P(f(x + n) <= t) >= q_up = Phi(Phi^-1(q) + eps / sigma). Sorted rates r_(1) <= ... <= r_(n) of n
fresh draws at x, and k the smallest index with P(Bin(n, q_up) < k) >= 1 - alpha: with probability >= 1 -
alpha, fewer than k draws fall below the q_up-quantile of f(x + n), so r_(k) is at least that quantile. The
certificate: with confidence 1 - alpha over the certification draws, for EVERY x' within eps of x, the
encoder's rate at x' is at most r_(k) with probability >= q over its own noise. k > n: abstain.

Not certified: the rate of one encode (a probability q over the encoder's noise, not a sure bound); the
rate of center smoothing's stream (its copy is chosen from m draws: the joint noise has m times the
dimension, the radius counts sqrt(m) eps, vacuous at any useful eps); perturbations outside the L2 ball.
"""

from __future__ import annotations

import math
import secrets
from statistics import NormalDist

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.coding import device_of, stream_bytes
from rnic.defenses.codec import DefendedCodec
from rnic.defenses.image import Noise
from rnic.defenses.smoothing import entries_by_radius

_NORMAL = NormalDist()


def upper_level(quantile: float, eps: float, sigma: float) -> float:
    """q_up: the percentile at x that bounds the `quantile`-th percentile anywhere within eps."""
    return _NORMAL.cdf(_NORMAL.inv_cdf(quantile) + eps / sigma)


def binomial_pmf(i: int, n: int, p: float) -> float:
    """P(Bin(n, p) = i), 0 < p < 1."""
    log = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
    return math.exp(log + i * math.log(p) + (n - i) * math.log1p(-p))


def order_index(samples: int, level: float, alpha: float) -> int | None:
    """The smallest k (1-based) with P(Bin(samples, level) < k) >= 1 - alpha: the k-th smallest of
    `samples` draws is at least the `level`-quantile with confidence 1 - alpha (None: no k <= samples)."""
    if level >= 1:
        return None
    below = 0.0  # P(Bin < k)
    for k in range(1, samples + 1):
        below += binomial_pmf(k - 1, samples, level)
        if below >= 1 - alpha:
            return k
    return None


def noise_stage(coder: nn.Module) -> Noise:
    """The encoder's noise: the first stage of a defended codec whose other stages are deterministic."""
    stages = list(getattr(coder, "stages", []))
    if not (isinstance(coder, DefendedCodec) and stages and isinstance(stages[0], Noise)):
        raise ValueError(
            "certify.rate=true needs defense=noise first (the encoder codes one Gaussian-noised copy; its "
            "rate is what the certificate bounds)"
        )
    random = [s.name for s in stages[1:] if s.random]
    if random:
        raise ValueError(
            f"certify.rate=true: defense {random} draw after the noise; the bound needs them fixed"
        )
    return stages[0]


class RateCertificate:
    """`certify.rate=true`: per image and input radius, a bound on the `quantile`-th percentile of the
    encoder's rate (real bitstreams) anywhere within the radius, from `samples` draws at confidence 1 -
    `alpha`; `seed`: None draws fresh from the OS, an integer starts a reproducible stream."""

    def __init__(self, quantile=0.5, samples=100, alpha=0.05, batch=50, seed=None):
        for key, value in (("rate_quantile", quantile), ("rate_alpha", alpha)):
            if not 0 < float(value) < 1:
                raise ValueError(f"certify.{key}={value} must be in (0, 1)")
        for key, value in (("rate_samples", samples), ("rate_batch", batch)):
            if int(value) < 1:
                raise ValueError(f"certify.{key}={value} must be >= 1")
        self.quantile, self.alpha = float(quantile), float(alpha)
        self.samples, self.batch = int(samples), int(batch)
        self._seeds = None if seed is None else torch.Generator().manual_seed(int(seed))

    def draw_seed(self) -> int:
        if self._seeds is None:
            return secrets.randbits(62)
        return int(torch.randint(0, 2**62, (), generator=self._seeds))

    @torch.no_grad()
    def rates(self, coder: DefendedCodec, image: Tensor, seed: int) -> Tensor:
        """The bpp of the encoder's real streams of `samples` draws at `image` (3, H, W): draw i is what
        the deployed encoder sends when its noise generator starts from `seed + i`."""
        noise, rest = noise_stage(coder), DefendedCodec(coder.codec, [*coder.stages[1:], *coder.inner])
        image = image.to(device_of(coder))
        bits = []
        for start in range(0, self.samples, self.batch):
            draws = range(start, min(start + self.batch, self.samples))
            generators = [torch.Generator(image.device).manual_seed(seed + i) for i in draws]
            noisy, _ = noise.encode(image.expand(len(draws), *image.shape), generators)
            strings = rest.compress(noisy)["strings"]
            bits += [8 * stream_bytes(strings, i) for i in range(len(draws))]
        return torch.tensor(bits, dtype=torch.float64) / (image.shape[-2] * image.shape[-1])

    def percentile(self, rates: Tensor) -> float:
        """The empirical `quantile`-th percentile: the ceil(n q)-th smallest draw."""
        return float(rates.sort().values[math.ceil(len(rates) * self.quantile) - 1])

    def certify(self, coder: DefendedCodec, image: Tensor, budgets, seed: int) -> list[dict]:
        """Per input radius eps (L2 on [0, 1] samples): the bound on the rate's percentile within eps, or
        abstain; `bpp_clean` is the empirical percentile at the image itself (not certified)."""
        sigma = noise_stage(coder).sigma
        rates = self.rates(coder, image, seed)
        ordered = rates.sort().values
        records = []
        for eps in budgets:
            level = upper_level(self.quantile, float(eps), sigma)
            k = order_index(self.samples, level, self.alpha)
            records.append(
                {
                    "eps": float(eps),
                    "quantile": self.quantile,
                    "level": level,
                    "order": k,
                    "bpp_clean": self.percentile(rates),
                    "bpp_bound": None if k is None else float(ordered[k - 1]),
                    "abstain": k is None,
                }
            )
        return records

    def certify_images(self, coder: DefendedCodec, x: Tensor, x_adv: Tensor, records: list[dict], budgets):
        """Add to each image's record its rate certificate (`certified_rate`: one entry per radius, each
        with the empirical percentile at the attacked image, `bpp_attacked`, from fresh draws) and the
        seeds of the draws (`certify_rate_seed`, `certify_rate_seed_adv`)."""
        for row, record in enumerate(records):
            seed, seed_adv = self.draw_seed(), self.draw_seed()
            certified = self.certify(coder, x[row], budgets, seed)
            attacked = self.percentile(self.rates(coder, x_adv[row], seed_adv))
            for entry in certified:
                entry["bpp_attacked"] = attacked
            record.update(certified_rate=certified, certify_rate_seed=seed, certify_rate_seed_adv=seed_adv)


def rate_certificate(cfg) -> RateCertificate | None:
    """The rate certificate of a run's `certify` settings (None without certify.rate=true)."""
    settings = cfg.get("certify") or {}
    if not settings.get("rate"):
        return None
    keys = ("quantile", "samples", "alpha", "batch", "seed")
    return RateCertificate(**{key: settings[f"rate_{key}"] for key in keys if f"rate_{key}" in settings})


def rate_means(records: list[dict]) -> list[dict]:
    """Per input radius: the mean bound, clean and attacked percentile over the images that got a bound,
    and how many abstained."""
    by_eps = entries_by_radius(records, "certified_rate")
    means = []
    for eps, entries in by_eps.items():
        kept = [e for e in entries if not e["abstain"]]
        means.append(
            {
                "eps": eps,
                "quantile": entries[0]["quantile"],
                "bpp_clean": rd.mean_or_none([e["bpp_clean"] for e in kept]),
                "bpp_bound": rd.mean_or_none([e["bpp_bound"] for e in kept]),
                "bpp_attacked": rd.mean_or_none([e.get("bpp_attacked") for e in kept]),
                "abstained": len(entries) - len(kept),
                "images": len(entries),
            }
        )
    return means


def rate_columns(record: dict) -> dict:
    """A record's rate certificate as flat CSV columns, one per radius."""
    return {f"bpp_bound@{e['eps']:g}": e["bpp_bound"] for e in record.get("certified_rate") or []}


def rate_table(means: list[dict]) -> str:
    q = means[0]["quantile"] if means else 0.5
    lines = [
        f"\ncertified rate (noise): within eps, the encoder's rate is <= the bound with probability >= {q:g}",
        f"{'eps (L2)':>9} {'clean bpp':>10} {'bound bpp':>10} {'attacked':>9} {'abstained':>10}",
    ]
    for m in means:
        shown = [
            f"{v:.4f}" if v is not None else "n/a"
            for v in (m["bpp_clean"], m["bpp_bound"], m["bpp_attacked"])
        ]
        lines.append(
            f"{m['eps']:>9g} {shown[0]:>10} {shown[1]:>10} {shown[2]:>9} {m['abstained']:>6}/{m['images']}"
        )
    return "\n".join(lines)
