"""Worst case over several attacks, judged on the real bitstream: `Ensemble` and `AutoAttack`."""

from __future__ import annotations

import copy
import inspect
import time
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.attacks import rng
from rnic.attacks.apgd import APGD
from rnic.attacks.base import Attack, ZeroGradientError
from rnic.attacks.objectives import Objective
from rnic.attacks.pgd import PGD
from rnic.attacks.square import Square
from rnic.attacks.threshold import ThresholdAttack
from rnic.coding import CODING_DEVICE, coder_on, compress_decompress

SELECTS = ("psnr", "vi")
GRADIENT_PROXIES = (
    "skip",
    "ste",
    "noise",
)  # which one transfers best to the real rounding depends on the codec
REFERENCES = ("clean", "source")


@torch.no_grad()
def real_figures(coder: nn.Module, x: Tensor, x_adv: Tensor, clean_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, on decoded bitstreams: the PSNR of the adversarial reconstruction against the source,
    and the VI (rd.vulnerability_index: NaN for an unperturbed image)."""
    with rng.measured_draws():  # behind a random defense: the draw attack.py reports (rnic.evaluation.pairs)
        adv_hat = compress_decompress(coder, x_adv)[0]
    return rd.psnr(adv_hat, x), rd.vulnerability_index(adv_hat, clean_hat, x_adv, x)


def _names(members: Mapping[str, Attack] | Sequence[Attack]) -> dict[str, Attack]:
    if isinstance(members, Mapping):
        return dict(members)
    named: dict[str, Attack] = {}
    for member in members:
        name, k = type(member).__name__, 2
        while name in named:  # PGD, PGD-2, ...
            name, k = f"{type(member).__name__}-{k}", k + 1
        named[name] = member
    return named


def with_objective(attack: Attack, objective: Objective) -> Attack:
    """A copy of `attack` that maximises `objective`; an ensemble's members each get it (they attack, the
    ensemble only selects), the original is left as it was."""
    copied = copy.copy(attack)
    copied.objective = objective
    if isinstance(attack, Ensemble):
        copied.members = {name: with_objective(m, objective) for name, m in attack.members.items()}
    return copied


def gradient_proxy(attack: Attack) -> str:
    """The proxy `attack` differentiates through: its own, or an ensemble's first gradient member's (auto
    leaves its own proxy unset: each member has one)."""
    if getattr(attack, "proxy", None) is not None:
        return attack.proxy
    members = [m for m in getattr(attack, "members", {}).values() if not m.gradient_free]
    if not members:
        raise ValueError(f"{type(attack).__name__} has no gradient attack, hence no proxy to differentiate")
    return gradient_proxy(members[0])


def member_seed(seed: int | None, index: int) -> int | None:
    """The seed of an ensemble's `index`-th member."""
    return None if seed is None else seed + index


class Ensemble(Attack):
    """Runs `members` in order on the same images (member k with seed + k), and keeps for each image the
    adversarial example whose REAL reconstruction (compressed and decompressed) is worst
    for the codec: by `select`, the lowest PSNR against the source (`psnr`) or the highest VI (`vi`).
    Per image the result is never better for the codec than any member's (ties go to the earlier); behind
    a random defense every candidate is coded with the draw attack.py measures (`rng.measured_draws`).

    A member that cannot run on this codec (ZeroGradientError, e.g. a proxy with zero gradient) is
    skipped with a warning. After a call, `last_report` holds (lists run over the batch's images):

        {"select": "psnr" | "vi",
         "winner": [member name or None (all skipped)],
         "psnr_adv": [...], "vi": [...],                      # of the kept examples, decoded
         "members": {name: {"psnr_adv": [...], "vi": [...], "seconds": s}},   # in run order
         "skipped": {name: reason}}

    `image_report(i)` gives image i's part. VI is NaN where it is not finite (an unperturbed image);
    such an image never wins by VI. The codec needs `update()` (real coding); coding runs on
    `coding_device` (default: the CPU, where CompressAI's coder is meant to run).
    """

    def __init__(
        self,
        codec: nn.Module,
        members: Mapping[str, Attack] | Sequence[Attack],
        select: str = "psnr",
        seed: int | None = 0,
    ):
        if select not in SELECTS:
            raise ValueError(f"attack.select={select!r} is unknown; choose one of: {', '.join(SELECTS)}")
        members = _names(members)
        if not members:
            raise ValueError("an attack ensemble needs at least one member")
        self.codec = codec
        self.members = members
        self.select = select
        self.seed = seed
        self.last_report: dict | None = None
        self.coding_device = CODING_DEVICE  # not a setting: where it codes does not change the result

    def settings(self) -> dict:
        """The arguments of its constructor and its subclasses' (not Attack's: the budget, objective and
        delivery are the members'), read back from the attributes of their names."""
        names: dict[str, None] = {}
        for cls in reversed(type(self).__mro__):
            if issubclass(cls, Ensemble) and "__init__" in cls.__dict__:
                names |= dict.fromkeys(p for p in inspect.signature(cls.__init__).parameters if p != "self")
        names.pop("codec", None)
        return {name: getattr(self, name) for name in names}

    @property
    def gradient_free(self) -> bool:
        """An ensemble of gradient-free members is gradient-free."""
        return all(member.gradient_free for member in self.members.values())

    @property
    def coding_device(self) -> str | torch.device:
        return self._coding_device

    @coding_device.setter
    def coding_device(self, device: str | torch.device) -> None:
        """Where the ensemble, and its members that code (Square on autoregressive codecs), code."""
        self._coding_device = device
        for member in self.members.values():
            if hasattr(member, "coding_device"):
                member.coding_device = device

    def __call__(
        self,
        x: Tensor,
        target: Tensor | None = None,
        mask: Tensor | None = None,
        eps: float | Tensor | None = None,
        seed: int | None = None,
    ) -> Tensor:
        """The worst adversarial example of each image; `eps` and `seed` override the members' own."""
        seed = self.seed if seed is None else seed
        x = x.detach()
        with rd.evaluating(self.codec):
            coder = coder_on(self.codec, self.coding_device)
            with rng.measured_draws():
                clean_hat = compress_decompress(coder, x)[0]
            best = x.clone()
            worst = torch.full((x.shape[0],), -torch.inf, device=x.device)  # how bad for the codec
            best_psnr, best_vi = torch.full_like(worst, torch.nan), torch.full_like(worst, torch.nan)
            winner: list[str | None] = [None] * x.shape[0]
            report = {"select": self.select, "members": {}, "skipped": {}}
            for index, (name, member) in enumerate(self.members.items()):
                started = time.perf_counter()
                try:  # member k draws its random start from seed + k: no two members share one
                    x_adv = member(x, target, mask, eps=eps, seed=member_seed(seed, index))
                except ZeroGradientError as err:
                    message = f"{type(self).__name__}: member {name} cannot run on this codec, skipped: {err}"
                    warnings.warn(message, stacklevel=2)
                    report["skipped"][name] = str(err)
                    continue
                psnr_adv, vi = real_figures(coder, x, x_adv, clean_hat)
                badness = -psnr_adv if self.select == "psnr" else torch.nan_to_num(vi, nan=-torch.inf)
                better = badness > worst
                best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
                worst = torch.where(better, badness, worst)
                best_psnr = torch.where(better, psnr_adv, best_psnr)
                best_vi = torch.where(better, vi, best_vi)
                winner = [name if b else w for b, w in zip(better.tolist(), winner, strict=True)]
                report["members"][name] = {
                    "psnr_adv": psnr_adv.tolist(),
                    "vi": vi.tolist(),
                    "seconds": time.perf_counter() - started,
                }
            report.update(winner=winner, psnr_adv=best_psnr.tolist(), vi=best_vi.tolist())
            self.last_report = report
        return best

    def image_report(self, index: int) -> dict:
        """Image `index`'s part of `last_report`: winner, its figures, each member's figures, skipped."""
        report = self.last_report
        if report is None:
            raise RuntimeError("the ensemble has not run yet")
        return {
            "winner": report["winner"][index],
            "psnr_adv": report["psnr_adv"][index],
            "vi": report["vi"][index],
            "members": {
                name: {"psnr_adv": m["psnr_adv"][index], "vi": m["vi"][index]}
                for name, m in report["members"].items()
            },
            "skipped": sorted(report["skipped"]),
        }


class AutoAttack(Ensemble):
    """`attack=auto`: a parameter-free worst case for one threat model.

    Members, in this order, all with the same threat, budget and seed:
    PGD at its defaults (10 steps; member 0, so it draws the random start PGD draws alone at the same
    seed: auto is per image never weaker than it, and its fixed steps end in other optima than APGD's),
    APGD (`steps` iterations) under each proxy (skip, ste, noise) with each of two objectives, the
    distortion against the clean reconstruction and against the source (`apgd-<proxy>-<reference>`);
    under the mse threat, Chen & Ma's threshold attack (`adam_steps` Adam steps, default 10 x `steps`;
    its best iterate within the budget), whose per-sample scaled steps do not stall where APGD's
    normalised ones do inside the box; then Square (`queries` queries) on the real rounding, maximising
    the distortion against the source (select=psnr) or the clean reconstruction (select=vi). Square runs
    on every image: choosing the images by how the others did in the batch would make an image's result
    depend on its batch mates.

    `objective` only contributes its distortion metric (mse or ms-ssim): the members use both
    references, and its kind must be `distortion`. The members choose their proxies: `proxy` must stay
    None. See `Ensemble` for the selection and `last_report`.
    """

    def __init__(
        self,
        codec: nn.Module,
        threat: str = "linf",
        eps: float | Tensor | None = None,
        steps: int = 100,
        queries: int = 300,
        select: str = "psnr",
        adam_steps: int | None = None,
        objective: Objective | None = None,
        proxy: str | None = None,
        round_8bit: bool = False,
        seed: int | None = 0,
    ):
        eps = self.bind_threat(threat, eps)
        if proxy is not None:
            raise ValueError(
                f"attack.proxy={proxy!r}: attack=auto runs APGD under each of {', '.join(GRADIENT_PROXIES)} "
                "and Square on the real rounding; leave attack.proxy=null"
            )
        objective = objective if objective is not None else Objective()
        if objective.kind != "distortion":
            raise ValueError(
                f"attack.objective.kind={objective.kind!r}: attack=auto maximises the reconstruction's "
                "distortion; use kind=distortion"
            )
        common = {"threat": threat, "eps": eps, "round_8bit": round_8bit, "seed": seed}
        members: dict[str, Attack] = {
            "pgd": PGD(
                codec, objective=Objective(kind="distortion", reference="clean", distortion=objective.metric),
                **common,
            )
        }  # fmt: skip
        for member_proxy in GRADIENT_PROXIES:
            for reference in REFERENCES:
                members[f"apgd-{member_proxy}-{reference}"] = APGD(
                    codec,
                    steps=steps,
                    objective=Objective(kind="distortion", reference=reference, distortion=objective.metric),
                    proxy=member_proxy,
                    **common,
                )
        adam_steps = 10 * int(steps) if adam_steps is None else int(adam_steps)
        if threat == "mse":
            members["threshold"] = ThresholdAttack(
                codec,
                eps=eps,
                box=self.threat_model.box,
                steps=adam_steps,
                select="best",  # an ensemble keeps admissible examples only
                objective=Objective(kind="distortion", reference="clean", distortion=objective.metric),
                round_8bit=round_8bit,
                seed=seed,
            )
        square_reference = "source" if select == "psnr" else "clean"
        members["square"] = Square(
            codec,
            queries=queries,
            objective=Objective(kind="distortion", reference=square_reference, distortion=objective.metric),
            **common,
        )
        super().__init__(codec, members, select=select, seed=seed)
        self.eps = eps
        self.steps = int(steps)
        self.queries = int(queries)
        self.adam_steps = adam_steps
        self.objective = objective
        self.proxy = proxy
        self.round_8bit = round_8bit

    def settings(self) -> dict:
        # The members follow from the other settings: listing them would only repeat those.
        settings = super().settings()
        del settings["members"]
        own = [name for name in inspect.signature(AutoAttack.__init__).parameters if name in settings]
        return {**{name: settings.pop(name) for name in own}, **settings}
