"""Center smoothing (Kumar & Goldstein, "Center Smoothing: Certified Robustness for Networks with Structured
Outputs", NeurIPS 2021) for a codec: a certified bound on how far ANY input perturbation of L2 norm <= eps
can move the smoothed reconstruction.

The smoothed codec's output for x is one of the reconstructions f(x + N(0, sigma^2 I)): the sample whose
median L2 distance to the other samples is smallest (the approximate center of the smallest ball that
holds half of them). The encoder draws the noisy copies, picks the center and sends that copy's bitstream;
the decoder is the plain codec's. A second, independent set of samples checks that the ball around the
center of the median radius holds enough of the mass (else the smoothing abstains), and a third one
certifies: with probability >= 1 - 2 alpha (the center's check and the certificate each fail with
probability <= alpha), ||f_bar(x) - f_bar(x')||_2 <= (1 + beta) * R for every ||x - x'||_2 <= eps, where R
is the quantile of the samples' distances to the center at level Phi(Phi^-1(1/2 + delta) + eps / sigma) +
sqrt(ln(1 / alpha) / (2 n)), and beta = 2 is the center-approximation factor (a center chosen among the
samples is within 2x the smallest ball's radius of its center; the paper's appendix). Where that level
exceeds 1, the certificate abstains.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Sequence
from statistics import NormalDist

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.attacks import rng
from rnic.attacks.base import per_image, to_8bit
from rnic.attacks.proxy import quantization_proxy
from rnic.attacks.threat import Threat

RADIUS_COEFF = 3.0  # 1 + beta, beta = 2: the approximation factor of a center chosen among the samples
_NORMAL = NormalDist()


def min_samples(alpha: float, delta: float) -> int:
    """The fewest prediction samples for which the center can pass its check at all (Delta_1 <= delta)."""
    return math.ceil(math.log(2 / alpha) / (2 * delta**2))


def certified_level(eps: float, sigma: float, delta: float, alpha: float, samples: int) -> float:
    """The quantile level of the distances to the center that bounds the smoothed output at radius eps."""
    shift = _NORMAL.cdf(_NORMAL.inv_cdf(0.5 + delta) + eps / sigma)
    return shift + math.sqrt(math.log(1 / alpha) / (2 * samples))


def center_of(samples: Tensor) -> tuple[int, float]:
    """(index, median distance) of the sample with the smallest median L2 distance to all samples (itself
    included, as the paper's code counts it); ties go to the first."""
    flat = samples.flatten(1).double()
    distances = torch.cdist(flat, flat)
    medians = distances.quantile(0.5, dim=1)  # the mean of the two middle values for an even count
    index = int(medians.argmin())
    return index, float(medians[index])


class CenterSmoothing(nn.Module):
    """`defense=center_smoothing`: Gaussian noise of `sigma` on the input, `samples` noisy copies for the
    center and as many for its check, `certify_samples` for a certificate, confidence 1 - `alpha` each
    (jointly 1 - 2 alpha); `delta` the margin over half of the mass. `batch`: noisy copies per codec
    forward. `seed`: None (default) draws every encode's noise fresh from the OS, as the guarantee assumes
    (fresh draws at the perturbed input); an integer starts a reproducible stream of per-image seeds for
    studies (an attacker who knows it knows the draws). Each encode's seed is recorded."""

    name = "center_smoothing"
    random = True

    def __init__(
        self,
        sigma: float = 0.05,
        samples: int = 200,
        certify_samples: int = 1000,
        alpha: float = 0.05,
        delta: float = 0.2,
        batch: int = 50,
        seed: int | None = None,
    ):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"defense.center_smoothing.sigma={sigma} must be > 0")
        if not 0 < alpha < 1:
            raise ValueError(f"defense.center_smoothing.alpha={alpha} must be in (0, 1)")
        if not 0 < delta < 0.5:
            raise ValueError(f"defense.center_smoothing.delta={delta} must be in (0, 0.5)")
        needed = min_samples(alpha, delta)
        if int(samples) < needed:
            raise ValueError(
                f"defense.center_smoothing.samples={samples} is below the {needed} that alpha={alpha} and "
                f"delta={delta} need (ln(2 / alpha) / (2 delta^2)): the center could never pass its check"
            )
        for key, value in (("certify_samples", certify_samples), ("batch", batch)):
            if int(value) < 1:
                raise ValueError(f"defense.center_smoothing.{key}={value} must be >= 1")
        self.sigma = float(sigma)
        self.samples = int(samples)
        self.certify_samples = int(certify_samples)
        self.alpha = float(alpha)
        self.delta = float(delta)
        self.batch = int(batch)
        self.seed = None if seed is None else int(seed)
        self._seeds = None if seed is None else random.Random(self.seed)

    def noisy(self, x: Tensor, generators: list[torch.Generator]) -> Tensor:
        return x + self.sigma * rng.randn(generators, tuple(x.shape[1:]), x)

    @torch.no_grad()
    def reconstructions(self, codec: nn.Module, image: Tensor, count: int, generator: torch.Generator):
        """(noisy copies, their reconstructions) of one image (3, H, W): `count` draws, `batch` per forward
        (the eval-mode forward rounds as the real coder does)."""
        copies, recons = [], []
        for noise in self.noise(image, count, generator):
            copy = image[None] + self.sigma * noise
            copies.append(copy)
            recons.append(rd.forward_padded(codec, copy)[0].clamp(0, 1))
        return torch.cat(copies), torch.cat(recons)

    def noise(self, image: Tensor, count: int, generator: torch.Generator) -> list[Tensor]:
        """The N(0, I) draws of `count` copies of `image`, `batch` per tensor, as the encoder draws them
        (a white-box attacker who knows the seed computes them too)."""
        sizes = [min(self.batch, count - start) for start in range(0, count, self.batch)]
        draws = [torch.randn((n, *image.shape), generator=generator, device=generator.device) for n in sizes]
        return [d.to(image) for d in draws]

    def draw_seed(self) -> int:
        """The seed of one image's draws: fresh from the OS, or the next of the stream `seed` starts."""
        return secrets.randbits(62) if self._seeds is None else self._seeds.getrandbits(62)

    def upcoming_seeds(self, count: int) -> list[int]:
        """The seeds of the next `count` encodes, left in the stream: what an attacker who knows the study's
        `seed` computes (with fresh OS draws, the default, nobody can)."""
        if self._seeds is None:
            raise ValueError(
                "center smoothing draws fresh noise from the OS (defense.seed=null), so no "
                "attacker can know its draws: set defense.seed to study an attacker who does"
            )
        state = self._seeds.getstate()
        seeds = [self._seeds.getrandbits(62) for _ in range(count)]
        self._seeds.setstate(state)
        return seeds

    @staticmethod
    def generator(seed: int, draw: int) -> torch.Generator:
        """The CPU generator of a sample set drawn from `seed` (0: center, 1: its check, 2: certificate)."""
        return torch.Generator().manual_seed(seed + draw)

    @torch.no_grad()
    def predict(self, codec: nn.Module, image: Tensor, seed: int | None = None) -> dict:
        """The center of one image: its noisy copy (what the encoder codes), its reconstruction, the median
        radius, and whether the ball of that radius holds enough fresh samples (else: abstain); the draws'
        `seed` (None: `draw_seed()`) is returned with them."""
        seed = self.draw_seed() if seed is None else int(seed)
        copies, recons = self.reconstructions(codec, image, self.samples, self.generator(seed, 0))
        index, radius = center_of(recons)
        center = recons[index]
        _, check = self.reconstructions(codec, image, self.samples, self.generator(seed, 1))
        inside = float(((check - center).flatten(1).double().norm(dim=1) <= radius).double().mean())
        margin = math.sqrt(math.log(2 / self.alpha) / (2 * self.samples))
        abstain = max(margin, 0.5 - (inside - margin)) > self.delta
        return {
            "copy": copies[index],
            "center": center,
            "radius": radius,
            "inside": inside,
            "abstain": abstain,
            "seed": seed,
        }

    @torch.no_grad()
    def certify(
        self, codec: nn.Module, image: Tensor, center: Tensor, budgets: Sequence[float], seed: int
    ) -> list[dict]:
        """Per input radius eps (L2 on [0, 1] samples): the certified bound on the smoothed reconstruction's
        move (L2, and as a PSNR floor against the clean smoothed reconstruction), or abstain; the samples
        drawn from `seed` (a seed of its own: independent of the center's draws)."""
        _, recons = self.reconstructions(codec, image, self.certify_samples, self.generator(seed, 2))
        distances = (recons - center).flatten(1).double().norm(dim=1)
        values = image.numel()
        records = []
        for eps in budgets:
            level = certified_level(float(eps), self.sigma, self.delta, self.alpha, self.certify_samples)
            record = {"eps": float(eps), "eps_psnr": psnr_of_l2(float(eps), values), "level": level}
            if level > 1:
                record.update(bound_l2=None, psnr_floor=None, abstain=True, abstain_reason="level")
            else:
                bound = RADIUS_COEFF * float(distances.quantile(level))
                record.update(
                    bound_l2=bound, psnr_floor=psnr_of_l2(bound, values), abstain=False, abstain_reason=None
                )
            records.append(record)
        return records


def certified_radii(settings, attacks) -> list[float]:
    """certify.eps, checked: radii >= 0, and only L2 attacks (the certificates bound L2 perturbations)."""
    budgets = [float(eps) for eps in settings.get("eps") or []]
    if not budgets or any(not eps >= 0 for eps in budgets):
        raise ValueError(f"certify.eps={list(settings.get('eps') or [])}: give input radii >= 0 (L2)")
    for attack in attacks:
        threat = getattr(attack, "threat", None)
        if threat not in (None, "l2"):
            raise ValueError(
                f"attack.threat={threat}: the certificate bounds L2 perturbations (certify.eps); attack "
                "with attack.threat=l2 at the same radius (the empirical figure), or attack=none"
            )
    return budgets


def psnr_of_l2(norm: float, values: int) -> float | None:
    """The PSNR (peak 1) of a difference of L2 norm `norm` over `values` samples (None for no difference)."""
    return None if norm <= 0 else 10 * math.log10(values / norm**2)


class SmoothedCodec(nn.Module):
    """`codec` behind center smoothing, with CompressAI's interface. `compress` sends, per image, the
    stream of its center copy and a one-byte stream saying whether the center passed its check (the
    decoder is the codec's own; `decompress` also returns `center_passed`); `forward` reconstructs one
    noisy copy per call (random: attacks average `eot_samples` draws); `certify` gives the certificate."""

    def __init__(self, codec: nn.Module, smoothing: CenterSmoothing, eot_samples: int = 8):
        super().__init__()
        if int(eot_samples) < 1:
            raise ValueError(f"attack_run.eot_samples={eot_samples} must be >= 1")
        self.codec = codec
        self.smoothing = smoothing
        self.names = [smoothing.name]
        self.eot_samples = int(eot_samples)
        self.random = True
        self.last_choice: dict[str, list] = {}

    @property
    def downsampling_factor(self) -> int:
        return 1  # the inner codec pads

    def check_size(self, size: tuple[int, int]) -> None:
        """Any size: the codec pads inside."""

    def update(self, scale_table=None, force: bool = False) -> bool:
        return (
            self.codec.update(force=force) if scale_table is None else self.codec.update(scale_table, force)
        )

    def aux_loss(self) -> Tensor:
        return self.codec.aux_loss()

    def forward(self, x: Tensor) -> dict:
        generators = rng.image_generators(x.shape[0], x.device)
        x_hat, likelihoods, _ = rd.forward_padded(self.codec, self.smoothing.noisy(x, generators))
        return {"x_hat": x_hat, "likelihoods": likelihoods}

    @torch.no_grad()
    def compress(self, x: Tensor) -> dict:
        """Each image's center copy, coded for real, and whether its center passed the check (a byte)."""
        with rd.evaluating(self.codec):  # the real rounding, whatever mode the codec was left in
            predictions = [self.smoothing.predict(self.codec, image) for image in x]
        self.last_choice = {  # per image, into attack.py's records (rnic.evaluation.pairs.code_pair)
            "smoothing_abstain": [p["abstain"] for p in predictions],
            "smoothing_radius": [p["radius"] for p in predictions],
            "smoothing_seed": [p["seed"] for p in predictions],  # reproduces the encoder's draws
        }
        copies = torch.stack([p["copy"] for p in predictions])
        padded, unpadding = rd.pad(copies, rd.stride(self.codec))
        encoded = self.codec.compress(padded)
        passed = [bytes([not p["abstain"]]) for p in predictions]
        strings = [*encoded["strings"], passed]
        return {"strings": strings, "shape": {"inner": encoded["shape"], "unpadding": unpadding}}

    @torch.no_grad()
    def decompress(self, strings: list, shape: dict) -> dict:
        x_hat = self.codec.decompress(strings[:-1], shape["inner"])["x_hat"]
        passed = [bool(flag[0]) for flag in strings[-1]]
        return {"x_hat": rd.unpad(x_hat, shape["unpadding"]).clamp(0, 1), "center_passed": passed}


def certify_images(
    smoothed: SmoothedCodec, x: Tensor, clean_hat: Tensor, adv_hat: Tensor, records: list[dict], budgets
) -> None:
    """Add to each image's record its certificate (`certified`: one entry per input radius; all abstain
    where the clean image's center failed its check, or the attacked image's: the bound holds only for a
    checked center at the perturbed input too), the certificate's seed (`certify_seed`), and the empirical
    move of its smoothed reconstruction under the attack (`psnr_adv_vs_clean`), beside the PSNR floor."""
    for row, record in enumerate(records):
        seed = smoothed.smoothing.draw_seed()
        with rd.evaluating(smoothed.codec):
            certified = smoothed.smoothing.certify(
                smoothed.codec, x[row], clean_hat[row].to(x), budgets, seed
            )
        for image in ("clean", "adv"):
            if record.get(f"smoothing_abstain_{image}"):
                for entry in certified:
                    reason = entry["abstain_reason"] or ("clean" if image == "clean" else "attacked")
                    entry.update(bound_l2=None, psnr_floor=None, abstain=True, abstain_reason=reason)
        record["certified"] = certified
        record["certify_seed"] = seed
        record["psnr_adv_vs_clean"] = rd.finite_or_none(
            rd.psnr(adv_hat[row : row + 1], clean_hat[row : row + 1])[0]
        )


def entries_by_radius(records: list[dict], key: str) -> dict[float, list[dict]]:
    """The per-image certificate entries under `key` of every record, grouped by their input radius."""
    by_eps: dict[float, list[dict]] = {}
    for record in records:
        for entry in record.get(key) or []:
            by_eps.setdefault(entry["eps"], []).append(entry)
    return by_eps


def certified_means(records: list[dict]) -> list[dict]:
    """Per input radius: the mean certified bound and PSNR floor over the images that got a certificate,
    how many abstained (and why: the level above 1, the clean or the attacked image's center failing its
    check), and the abstention rate."""
    by_eps = entries_by_radius(records, "certified")
    means = []
    for eps, entries in by_eps.items():
        kept = [e for e in entries if not e["abstain"]]
        means.append(
            {
                "eps": eps,
                "eps_psnr": rd.mean_or_none([e["eps_psnr"] for e in entries]),
                "bound_l2": rd.mean_or_none([e["bound_l2"] for e in kept]),
                "psnr_floor": rd.mean_or_none([e["psnr_floor"] for e in kept]),
                "abstained": len(entries) - len(kept),
                "abstained_clean": sum(e.get("abstain_reason") == "clean" for e in entries),
                "abstained_attacked": sum(e.get("abstain_reason") == "attacked" for e in entries),
                "abstention_rate": (len(entries) - len(kept)) / len(entries),
                "images": len(entries),
            }
        )
    return means


def certificate_columns(record: dict) -> dict:
    """A record's certificate as flat CSV columns, one per radius."""
    return {f"psnr_floor@{e['eps']:g}": e["psnr_floor"] for e in record.get("certified") or []}


def certificate_table(means: list[dict]) -> str:
    lines = [
        "\ncertified (center smoothing): no perturbation within eps moves the smoothed reconstruction below"
    ]
    lines.append(
        f"{'eps (L2)':>9} {'input PSNR':>11} {'bound (L2)':>11} {'PSNR floor':>11} {'abstained':>10} "
        f"{'rate':>5} (clean/attacked)"
    )
    for m in means:
        show = [
            f"{v:.2f}" if v is not None else "n/a" for v in (m["eps_psnr"], m["bound_l2"], m["psnr_floor"])
        ]
        reasons = f"({m.get('abstained_clean', 0)}/{m.get('abstained_attacked', 0)})"
        lines.append(
            f"{m['eps']:>9g} {show[0]:>11} {show[1]:>11} {show[2]:>11} {m['abstained']:>6}/{m['images']:<3} "
            f"{m.get('abstention_rate', 0):>5.0%} {reasons}"
        )
    return "\n".join(lines)


class KnownDrawsAttack:
    """White-box L2 attack on center smoothing's deployed encoder by an attacker who knows its draws: the
    strongest case, possible only when a study fixes `defense.seed` (with fresh OS draws,
    the default, it refuses). For each image of a batch it reads the seeds of the two encodes to come
    (attack.py codes a batch clean, then attacked), computes the clean center the decoder will deliver,
    and takes `steps` normalised gradient steps (quantisation skipped) on the median distance of the
    attacked encode's very noisy copies to that center, projected onto the L2 ball of radius `eps` and
    [0, 1]: the encoder's min-median choice then picks one of those copies. Deterministic: no seed."""

    gradient_free = False

    def __init__(
        self, codec: SmoothedCodec, eps: float | None = None, steps: int = 20, round_8bit: bool = False
    ):
        if not isinstance(codec, SmoothedCodec):
            raise ValueError(
                "attack=known_draws attacks the encoder of defense=center_smoothing (attack_run.adaptive="
                f"true), not {type(codec).__name__}"
            )
        if int(steps) < 1:
            raise ValueError(f"attack.steps={steps} must be >= 1")
        codec.smoothing.upcoming_seeds(0)  # refused here, before any image, if the draws are fresh
        self.codec = codec
        self.threat, self.threat_model = "l2", Threat("l2")
        self.eps = self.threat_model.budget(eps)
        self.threat_model.check(self.eps)
        self.steps, self.round_8bit = int(steps), bool(round_8bit)
        self.assumed_seeds: list[int] = []  # of the last batch's attacked encodes

    def __repr__(self) -> str:
        return f"KnownDrawsAttack(eps={self.eps!r}, steps={self.steps}, round_8bit={self.round_8bit})"

    def __call__(self, x: Tensor, target: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if target is not None or mask is not None:
            raise ValueError("attack=known_draws moves the smoothed reconstruction away: no target or mask")
        smoothing, codec = self.codec.smoothing, self.codec.codec
        seeds = smoothing.upcoming_seeds(2 * len(x))
        self.assumed_seeds = seeds[len(x) :]
        eps = per_image(self.eps, x, "eps").flatten()
        images = []
        for image, clean_seed, seed, radius in zip(x, seeds[: len(x)], self.assumed_seeds, eps, strict=True):
            with rd.evaluating(codec):  # the encoder's real rounding
                center = smoothing.predict(codec, image, clean_seed)["center"]
            images.append(self.attack_image(image.detach(), center, float(radius), seed))
        x_adv = torch.stack(images).clamp(0, 1)
        return to_8bit(x, x_adv) if self.round_8bit else x_adv

    def attack_image(self, image: Tensor, center: Tensor, eps: float, seed: int) -> Tensor:
        """Move `image` (3, H, W) within L2 `eps` so that the encode drawn from `seed` codes a copy far
        from `center` (the codec's eval mode, its rounding skipped for gradients)."""
        smoothing, codec = self.codec.smoothing, self.codec.codec
        draws = smoothing.noise(image, smoothing.samples, smoothing.generator(seed, 0))
        copies = torch.cat(draws)
        delta = torch.zeros_like(image, requires_grad=True)
        step = 2.5 * eps / self.steps  # PGD's usual step: the budget reached in steps / 2.5
        with rd.evaluating(codec), quantization_proxy(codec, "skip"), torch.enable_grad():
            for _ in range(self.steps):
                # The median's gradient is its copy's: find it without a graph, then differentiate that one.
                with torch.no_grad():
                    distances = torch.cat([self.distances(image + delta, noise, center) for noise in draws])
                median = int(distances.median(0).indices)
                noise = copies[median : median + 1]
                (grad,) = torch.autograd.grad(self.distances(image + delta, noise, center).sum(), delta)
                with torch.no_grad():
                    moved = (image + delta)[None] + step * self.threat_model.ascent(grad[None])
                    projected = self.threat_model.project(image[None], moved, torch.tensor(eps).to(image))
                    delta.copy_(projected[0] - image)
        return (image + delta).detach()

    def distances(self, image: Tensor, noise: Tensor, center: Tensor) -> Tensor:
        """L2 distances to `center` of the reconstructions of `image`'s copies with `noise` (N, 3, H, W)."""
        copies = image[None] + self.codec.smoothing.sigma * noise
        return (rd.forward_padded(self.codec.codec, copies)[0].clamp(0, 1) - center).flatten(1).norm(dim=1)
