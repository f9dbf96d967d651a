"""Robust training methods (`adv.method=`), all driven by the same `attack=` config, and the exact
count of the codec passes they cost.

- `none`: clean rate-distortion training (the equal-compute control); the attack only validates.
- `mix`: part of each batch replaced by fresh adversarial examples (`rnic.adversarial`).
- `free`: each batch replayed `adv.replays` times; one backward per replay gives the codec's gradient
  and the input gradient, which moves a perturbation carried over from batch to batch.
- `fast`: a single step of 1.25 x the budget from a uniform random start, guarded against
  catastrophic overfitting by a periodic check against the configured (multi-step) attack.
- `consistency`: RD loss on clean images + beta * lmbda * D(x_hat(x_adv), x_hat(x)), the
  adversarial example maximising that distance (TRADES' form); both reconstructions under the
  quantisation `adv.proxy` (ste: the real rounding, straight-through gradient), the clean one a fixed
  reference (`adv.detach`).
- `teacher`: RD loss on clean images + beta * lmbda * D(x_hat(x_adv), teacher(x)), the teacher a
  frozen copy of the starting codec (or `adv.teacher=PATH` of the same architecture).
- `latent`: RD loss on clean images + beta * MSE(g_a(x_adv), g_a(x)) in quantisation bins: the
  analysis transform made insensitive to the perturbation, with no decoder pass in its term.

consistency, teacher and latent take their adversarial examples from the configured attack or, with
`adv.adversary=single_step`, from one random-start step (as `fast`), which leaves most of the compute to
optimizer updates. Every method takes `adv.train=all|encoder|decoder` (applied by the training job, the
control included): encoder-only keeps the decoder and the bitstream format of the starting codec.

Passes. One pass is one forward of the codec whose graph a backward then runs through, on as many
images as the training batch holds: an attack step on half of the batch is half a pass, a replay of
`free` is one pass. Forwards without a backward (the attack's clean reference, the teacher, the
guard's comparison) are counted apart as forward passes. Both are counted by hooks on the codec's
(and the teacher's) forward during the training step, so the figures are measured, not assumed.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.adversarial import AdversarialMixing, Step, rd_step
from rnic.attacks import PGD, Attack, NoAttack, Objective, Threat, quantization_proxy
from rnic.attacks.base import per_image
from rnic.attacks.objectives import distortion
from rnic.codecs import load_codec_state, read_codec_state

log = logging.getLogger(__name__)

METHODS = ("none", "mix", "free", "fast", "consistency", "teacher", "latent", "noise")
ADVERSARIES = ("attack", "single_step")
# The parts of a CompressAI codec that learn under `adv.train` (the rest, entropy models included, frozen).
TRAINED_PARTS = {"encoder": ("g_a", "h_a"), "decoder": ("g_s",)}


@dataclass
class PassCount:
    passes: float = 0.0  # forwards followed by a backward, in training batches
    forwards: float = 0.0  # forwards alone


@contextmanager
def count_passes(modules: list[nn.Module], batch_size: int, parts: list[nn.Module] = ()):
    """Within the block, count the forwards of `modules` (in units of `batch_size` images), and those of
    `parts` (a codec's analysis transform, called alone by `latent`) run outside a forward of `modules`,
    each counted as a whole pass (an upper bound on its cost)."""
    count = PassCount()
    depth = [0]  # how many of `modules`' forwards are running

    def enter(module, args):
        depth[0] += 1

    def leave(module, args, output):
        depth[0] -= 1
        hook(module, args, output)

    def hook(module, args, output):
        images = args[0].shape[0] / batch_size
        if torch.is_grad_enabled():
            count.passes += images
        else:
            count.forwards += images

    def part_hook(module, args, output):
        if depth[0] == 0:
            hook(module, args, output)

    handles = [m.register_forward_pre_hook(enter) for m in modules]
    handles += [m.register_forward_hook(leave) for m in modules]
    handles += [m.register_forward_hook(part_hook) for m in parts]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def train_only(codec: nn.Module, part: str) -> None:
    """Freeze every parameter of `codec` outside `part` (`adv.train`): `encoder` (the analysis transforms;
    decoder, entropy models and so the bitstream format stay the starting codec's), `decoder` (the synthesis
    transform), or `all`."""
    if part == "all":
        return
    if part not in TRAINED_PARTS:
        raise ValueError(f"adv.train={part!r} is unknown; choose one of: all, {', '.join(TRAINED_PARTS)}")
    names = TRAINED_PARTS[part]
    missing = [name for name in names if not isinstance(getattr(codec, name, None), nn.Module)]
    if missing:
        raise ValueError(
            f"adv.train={part}: {type(codec).__name__} has no {', '.join(missing)} (the {part} of a "
            "CompressAI codec); use adv.train=all"
        )
    for name, param in codec.named_parameters():
        param.requires_grad_(name.split(".")[0] in names)


def threat_of(attack: Attack, method: str) -> Threat:
    """The threat model of the configured attack (free and fast move inside it themselves)."""
    name = getattr(attack, "threat", None)
    if name is None:
        raise ValueError(
            f"adv.method={method} needs an attack with a threat model (attack=linf, l2, apgd or auto); "
            f"{type(attack).__name__} has none"
        )
    return Threat(name, box=getattr(attack, "box", None)) if name != "linf" else Threat(name)


class CleanTraining(AdversarialMixing):
    """`none`: clean training; the attack validates only (the control of a study)."""

    name = "none"

    def training_loss(self, module, x: Tensor) -> Step:
        return rd_step(module.codec, x, x, module.lmbda, module.metric)


class NoiseTraining(AdversarialMixing):
    """`noise`: Gaussian noise of `sigma` on the first `ratio` of each batch, the clean source as the target:
    a codec that reconstructs well from noisy inputs, for center smoothing (rnic.smoothing). It needs no
    attack (attack=none); with one, the attack validates only."""

    name = "noise"

    def __init__(self, attack: Attack, sigma: float = 0.05, **kwargs):
        super().__init__(attack, **kwargs)
        if not float(sigma) > 0:
            raise ValueError(f"adv.sigma={sigma} must be > 0 (the noise std of adv.method=noise)")
        self.sigma = float(sigma)
        if isinstance(attack, NoAttack):
            self.validate = False  # no attack to validate under

    def training_loss(self, module, x: Tensor) -> Step:
        n = self.count(x.shape[0])
        generator = torch.Generator(device=x.device).manual_seed(
            self.seed(module.global_step, module.global_rank) or 0
        )
        noise = torch.randn(x[:n].shape, generator=generator, device=x.device, dtype=x.dtype)
        inputs = torch.cat([x[:n] + self.sigma * noise, x[n:]])
        step = rd_step(module.codec, inputs, x, module.lmbda, module.metric)
        step.logs["train/noisy_images"] = float(n)
        return step

    def __repr__(self) -> str:
        return f"NoiseTraining(sigma={self.sigma}, ratio={self.ratio})"


class FreeTraining(AdversarialMixing):
    """`free` (Shafahi et al. 2019): each batch replayed `replays` times; every replay is one optimizer
    update and one training step. The perturbation of the first `ratio` of the batch is moved by one
    budget-sized ascent step on the input gradient of the same backward, projected onto the threat's
    set, and carried over to the next replay and the next batch."""

    name = "free"

    def __init__(self, attack: Attack, replays: int = 4, **kwargs):
        super().__init__(attack, **kwargs)
        self.replays = int(replays)
        self.threat = threat_of(attack, self.name)
        self._held: Tensor | None = None
        self._replay = 0
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    def replay(self, x: Tensor) -> Tensor:
        """The batch of this step: the loader's new batch at every `replays`-th step, else the held one.
        (The loader's batches fetched during replays are not used: its crops are random anyway.)"""
        if self._replay == 0 or self._held is None or self._held.shape != x.shape:
            self._held, self._replay = x, 0
        self._replay = (self._replay + 1) % self.replays
        return self._held

    def training_loss(self, module, x: Tensor) -> Step:
        x = self.replay(x)
        n = self.count(x.shape[0])
        source = x[:n]
        eps = per_image(self.budget(module.global_step), source, "eps")
        if self._delta is None or self._delta.shape != source.shape:
            self._delta = torch.zeros_like(source)
        adversarial = self.threat.project(source, source + self._delta, eps).detach().requires_grad_(True)
        inputs = torch.cat([adversarial, x[n:]])
        targets = inputs if self.target == "input" else x
        step = rd_step(module.codec, inputs, targets, module.lmbda, module.metric)
        self._pending = (source, adversarial, eps) if n else None
        step.logs["train/adv_images"] = float(n)
        step.logs["train/replay"] = float((self._replay - 1) % self.replays)
        return step

    def after_backward(self) -> None:
        if self._pending is None:
            return
        source, adversarial, eps = self._pending
        self._pending = None
        grad = adversarial.grad
        if grad is None:  # the loss did not reach the input (cannot happen with the RD loss)
            return
        size = self.threat.radius(source, eps)
        with torch.no_grad():
            moved = self.threat.project(source, adversarial + size * self.threat.ascent(grad), eps)
        self._delta = (moved - source).detach()

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", replays={self.replays})"


class RandomStartFGSM(PGD):
    """One ascent step of `step_scale` x the threat's radius from a uniform random start (Wong et al.)."""

    def __init__(self, codec: nn.Module, step_scale: float = 1.25, **kwargs):
        super().__init__(codec, steps=1, random_start=True, **kwargs)
        self.step_scale = step_scale

    def perturb(self, x: Tensor, ctx, eps: Tensor) -> Tensor:
        self.alpha = self.step_scale * self._threat.radius(x, eps)
        try:
            return super().perturb(x, ctx, eps)
        finally:
            self.alpha = None


def single_step_of(attack: Attack, method: str, objective: Objective | None = None) -> RandomStartFGSM:
    """The single-step counterpart of `attack`: same threat, budget, proxy, delivery and seed."""
    return RandomStartFGSM(
        attack.codec,
        threat=threat_of(attack, method).name,
        eps=attack.eps,
        objective=objective if objective is not None else attack.objective,
        proxy=attack.proxy,
        round_8bit=attack.round_8bit,
        seed=attack.seed,
    )


def objective_value(attack: Attack, x: Tensor, x_adv: Tensor) -> Tensor:
    """The mean value of `attack`'s objective at `x_adv` (no gradient; the codec in eval mode)."""
    codec = attack.codec
    with rd.evaluating(codec), torch.no_grad(), quantization_proxy(codec, attack.proxy):
        ctx = attack.objective.context(codec, x, None, None)
        return attack.value(x_adv, ctx).mean()


class FastTraining(AdversarialMixing):
    """`fast`: the first `ratio` of each batch replaced by a random-start single-step example.

    Guard: every `guard_every` steps the configured attack runs on the same images; when its objective
    exceeds `guard_ratio` x the single step's (catastrophic overfitting: the single step no longer finds
    what a real attack finds), the guard fires: it is logged, recorded in the final table, and the rest
    of the run trains on the configured attack's examples instead (what mix does)."""

    name = "fast"

    def __init__(self, attack: Attack, guard_every: int = 50, guard_ratio: float = 3.0, **kwargs):
        super().__init__(attack, **kwargs)
        if int(guard_every) < 0 or not guard_ratio > 0:
            raise ValueError(
                f"adv.guard_every={guard_every} must be >= 0 and adv.guard_ratio={guard_ratio} > 0"
            )
        self.single_step = single_step_of(attack, self.name)
        self.guard_every = int(guard_every)
        self.guard_ratio = float(guard_ratio)
        self.collapsed_at: int | None = None
        self.guard_values: tuple[float, float] | None = None

    def training_loss(self, module, x: Tensor) -> Step:
        step_number, rank = module.global_step, module.global_rank
        n = self.count(x.shape[0])
        source = x[:n]
        eps, seed = self.budget(step_number), self.seed(step_number, rank)
        logs = {"train/adv_images": float(n)}
        if n and self.collapsed_at is not None:
            adversarial = self.attack(source, eps=eps, seed=seed)
        elif n:
            adversarial = self.single_step(source, eps=eps, seed=seed)
            if self.guard_every and step_number % self.guard_every == 0:
                logs.update(self.guard(module, source, adversarial, eps, seed))
        else:
            adversarial = source
        inputs = torch.cat([adversarial, x[n:]])
        targets = inputs if self.target == "input" else x
        step = rd_step(module.codec, inputs, targets, module.lmbda, module.metric)
        step.logs.update(logs)
        step.logs["train/fast_collapsed"] = float(self.collapsed_at is not None)
        return step

    def guard(self, module, source: Tensor, single: Tensor, eps, seed) -> dict[str, float]:
        strong = self.attack(source, eps=eps, seed=seed)
        single_value = float(objective_value(self.attack, source, single))
        strong_value = float(objective_value(self.attack, source, strong))
        ratio = strong_value / max(single_value, 1e-12)
        fired = ratio > self.guard_ratio
        # Every rank decides together, so that all ranks keep doing the same passes.
        if module.trainer.strategy.reduce_boolean_decision(fired, all=False):
            self.collapsed_at = module.global_step
            self.guard_values = (strong_value, single_value)
            log.warning(
                "adv.method=fast: catastrophic overfitting at step %d: the guard's attack reaches an "
                "objective of %.4g, the single step only %.4g (ratio %.2f > adv.guard_ratio=%g); the rest "
                "of the run trains on %s's examples",
                module.global_step,
                strong_value,
                single_value,
                ratio,
                self.guard_ratio,
                type(self.attack).__name__,
            )
        return {"train/guard_ratio": ratio}

    def state_dict(self) -> dict:
        return {"collapsed_at": self.collapsed_at, "guard_values": self.guard_values}

    def load_state_dict(self, state: dict) -> None:
        self.collapsed_at = state.get("collapsed_at")
        self.guard_values = state.get("guard_values")


class ConsistencyTraining(AdversarialMixing):
    """`consistency` (TRADES-like): RD loss on the clean batch + beta * lmbda * D(x_hat(x_adv), reference)
    on its first `ratio`, D the training metric's distortion (255^2 MSE or 1 - MS-SSIM), the reference the
    clean reconstruction; the attack maximises D between the adversarial and the clean reconstruction.

    - `proxy`: the quantisation both reconstructions of the term go through: `ste` (the real rounding the
      attacker faces, straight-through gradient), `skip`, or `noise` (the training forward's own noise,
      the clean reconstruction of the RD loss reused as the reference).
    - `detach`: the reference is fixed (no gradient): the term moves the adversarial reconstruction toward
      the clean one, never the clean one toward the adversarial one.
    - `adversary`: `attack` (the configured one) or `single_step` (one random-start step of 1.25 x the
      budget: more optimizer updates for the same passes).
    """

    name = "consistency"

    def __init__(
        self,
        attack: Attack,
        beta: float = 1.0,
        metric: str = "mse",
        proxy: str = "ste",
        detach: bool = True,
        adversary: str = "attack",
        **kwargs,
    ):
        if proxy not in ("ste", "skip", "noise"):
            raise ValueError(f"adv.proxy={proxy!r} is unknown; choose one of: ste, skip, noise")
        if adversary not in ADVERSARIES:
            choices = ", ".join(ADVERSARIES)
            raise ValueError(f"adv.adversary={adversary!r} is unknown; choose one of: {choices}")
        objective = self.attack_objective(attack, metric)
        if adversary == "single_step":
            attack = single_step_of(attack, self.name, objective)
        else:
            attack = copy.copy(attack)
            attack.objective = objective
        super().__init__(attack, **kwargs)
        self.beta = float(beta)
        self.metric = metric
        self.proxy = proxy
        self.detach = bool(detach)
        self.adversary = adversary

    def attack_objective(self, attack: Attack, metric: str) -> Objective:
        """What the adversary maximises: the distance of the adversarial reconstruction to the clean one."""
        return Objective(kind="distortion", reference="clean", distortion=metric)

    def reference(self, module, x: Tensor, clean: Step) -> Tensor:
        """The clean reconstruction of `x` (the batch's first images) under the term's proxy."""
        if self.proxy == "noise":
            reference = clean.x_hat[: x.shape[0]]
            return reference.detach() if self.detach else reference
        with torch.set_grad_enabled(not self.detach and torch.is_grad_enabled()):
            return rd.forward_padded(module.codec, x)[0]

    def term(self, module, source: Tensor, adversarial: Tensor, clean: Step) -> Tensor:
        """Per image: lmbda * D(x_hat(adversarial), reference)."""
        with quantization_proxy(module.codec, self.proxy):
            x_hat_adv = rd.forward_padded(module.codec, adversarial)[0]
            reference = self.reference(module, source, clean)
        scale = 255**2 if self.metric == "mse" else 1.0
        return module.lmbda * scale * distortion(x_hat_adv, reference, self.metric)

    def training_loss(self, module, x: Tensor) -> Step:
        n = self.count(x.shape[0])
        step = rd_step(module.codec, x, x, module.lmbda, module.metric)
        step.logs["train/adv_images"] = float(n)
        if n == 0:
            return step
        source = x[:n]
        adversarial = self.attack(
            source,
            eps=self.budget(module.global_step),
            seed=self.seed(module.global_step, module.global_rank),
        )
        term = self.term(module, source, adversarial, step)
        step.loss = step.loss + self.beta * term.mean()
        step.logs[f"train/{self.name}_term"] = float(term.detach().mean())
        return step

    def __repr__(self) -> str:
        return (
            super().__repr__()[:-1]
            + f", beta={self.beta}, proxy={self.proxy}, detach={self.detach}, adversary={self.adversary})"
        )


class TeacherTraining(ConsistencyTraining):
    """`teacher`: the adversarial reconstruction pulled toward a frozen teacher's clean reconstruction
    (Cao et al.'s idea, in its simple form; the teacher codes with its real rounding); the adversary
    attacks the student with the configured objective."""

    name = "teacher"

    def __init__(self, attack: Attack, teacher: str | None = None, **kwargs):
        super().__init__(attack, **kwargs)
        self.teacher = copy.deepcopy(attack.codec)
        if teacher:
            load_teacher(self.teacher, teacher)
        self.teacher.requires_grad_(False).eval()

    def attack_objective(self, attack: Attack, metric: str) -> Objective:
        return attack.objective  # the configured attack, not the consistency objective

    def reference(self, module, x: Tensor, clean: Step) -> Tensor:
        self.teacher.eval()  # Lightning puts every submodule in train mode
        with torch.no_grad():
            return rd.forward_padded(self.teacher, x)[0].clamp(0, 1)


class LatentConsistency(ConsistencyTraining):
    """`latent`: RD loss on the clean batch + beta * MSE(g_a(x_adv), g_a(x)), the latents' mean squared
    distance in quantisation bins, the clean latent a fixed reference: the encoder learns to map the
    perturbed image where the clean one goes, and the term costs an analysis pass, no decoder pass."""

    name = "latent"

    def __init__(self, attack: Attack, **kwargs):
        if not isinstance(getattr(attack.codec, "g_a", None), nn.Module):
            raise ValueError(
                f"adv.method=latent needs the codec's analysis transform g_a; {type(attack.codec).__name__} "
                "has none"
            )
        super().__init__(attack, **kwargs)

    def term(self, module, source: Tensor, adversarial: Tensor, clean: Step) -> Tensor:
        stride = rd.stride(module.codec)
        y_adv = module.codec.g_a(rd.pad(adversarial, stride)[0])
        with torch.no_grad():
            y_clean = module.codec.g_a(rd.pad(source, stride)[0])
        return (y_adv - y_clean).pow(2).flatten(1).mean(1)


def load_teacher(teacher: nn.Module, path: str) -> None:
    """Teacher weights from `path`, refused unless they are the student's architecture."""
    state, codec_class = read_codec_state(path)
    if codec_class is not None and codec_class != type(teacher).__name__:
        raise ValueError(
            f"adv.teacher={str(path)!r} holds a {codec_class}, the student is a {type(teacher).__name__}: "
            "the teacher must be the same architecture"
        )
    try:
        load_codec_state(teacher, state)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:2])
        raise ValueError(
            f"adv.teacher={str(path)!r} is not the student's architecture ({type(teacher).__name__} "
            f"as model= configures it): {detail}"
        ) from None


def build_method(
    attack: Attack,
    method: str = "mix",
    replays: int = 4,
    beta: float = 1.0,
    teacher: str | None = None,
    guard_every: int = 50,
    guard_ratio: float = 3.0,
    metric: str = "mse",
    sigma: float = 0.05,
    proxy: str = "ste",
    detach: bool = True,
    adversary: str = "attack",
    **mixing,
) -> AdversarialMixing:
    """The training method `adv.method` around `attack` (the other `adv.*` keys as each method takes them)."""
    check_method_settings(method, replays, beta)
    term = {"beta": beta, "metric": metric, "proxy": proxy, "detach": detach, "adversary": adversary}
    if method == "none":
        return CleanTraining(attack, **mixing)
    if method == "mix":
        return AdversarialMixing(attack, **mixing)
    if method == "free":
        return FreeTraining(attack, replays=replays, **mixing)
    if method == "fast":
        return FastTraining(attack, guard_every=guard_every, guard_ratio=guard_ratio, **mixing)
    if method == "noise":
        return NoiseTraining(attack, sigma=sigma, **mixing)
    if method == "consistency":
        return ConsistencyTraining(attack, **term, **mixing)
    if method == "latent":
        return LatentConsistency(attack, **term, **mixing)
    return TeacherTraining(attack, teacher=teacher, **term, **mixing)


def check_method_settings(method: str, replays: int = 4, beta: float = 1.0) -> None:
    """Refuse an unknown method, free's m < 1, a negative beta (before anything is built)."""
    if method not in METHODS:
        raise ValueError(f"adv.method={method!r} is unknown; choose one of: {', '.join(METHODS)}")
    if int(replays) != replays or int(replays) < 1:
        raise ValueError(f"adv.replays={replays} must be an integer >= 1 (free's replays per batch)")
    if not float(beta) >= 0:
        raise ValueError(f"adv.beta={beta} must be >= 0")
