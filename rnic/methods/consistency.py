"""Methods that add a robustness term to the clean RD loss: `consistency` (TRADES-like), `teacher` (a frozen
teacher's reconstruction as the reference) and `latent` (the analysis transform's output)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.attacks import Attack, Objective, quantization_proxy, with_objective
from rnic.attacks.objectives import rd_distortion
from rnic.codecs import load_codec_state, read_codec_state
from rnic.methods.base import Step, TrainingMethod, rd_step
from rnic.methods.fast import single_step_of

ADVERSARIES = ("attack", "single_step")


class ConsistencyTraining(TrainingMethod):
    """`consistency` (TRADES-like): RD loss on the clean batch + beta * lmbda * D(x_hat(x_adv), reference)
    on its first `ratio`, D the training metric's distortion (255^2 MSE or 1 - MS-SSIM), the reference the
    clean reconstruction; the attack maximises D between the adversarial and the clean reconstruction.

    - `term_proxy`: the quantisation both reconstructions of the term go through: `ste` (the real rounding the
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
        term_proxy: str = "ste",
        detach: bool = True,
        adversary: str = "attack",
        **kwargs,
    ):
        if term_proxy not in ("ste", "skip", "noise"):
            raise ValueError(f"method.term_proxy={term_proxy!r} is unknown; choose one of: ste, skip, noise")
        if not float(beta) >= 0:
            raise ValueError(f"method.beta={beta} must be >= 0")
        if adversary not in ADVERSARIES:
            choices = ", ".join(ADVERSARIES)
            raise ValueError(f"method.adversary={adversary!r} is unknown; choose one of: {choices}")
        objective = self.attack_objective(attack, metric)
        if adversary == "single_step":
            attack = single_step_of(attack, self.name, objective)
        elif objective is not attack.objective:  # teacher keeps the configured attack, auto's members too
            attack = with_objective(attack, objective)
        super().__init__(attack, **kwargs)
        self.beta = float(beta)
        self.metric = metric
        self.term_proxy = term_proxy
        self.detach = bool(detach)
        self.adversary = adversary

    def attack_objective(self, attack: Attack, metric: str) -> Objective:
        """What the adversary maximises: the distance of the adversarial reconstruction to the clean one."""
        return Objective(kind="distortion", reference="clean", distortion=metric)

    def reference(self, module, x: Tensor, clean: Step) -> Tensor:
        """The clean reconstruction of `x` (the batch's first images) under the term's proxy."""
        if self.term_proxy == "noise":
            reference = clean.x_hat[: x.shape[0]]
            return reference.detach() if self.detach else reference
        with torch.set_grad_enabled(not self.detach and torch.is_grad_enabled()):
            return rd.forward_padded(module.codec, x)[0]

    def term(self, module, source: Tensor, adversarial: Tensor, clean: Step) -> Tensor:
        """Per image: lmbda * D(x_hat(adversarial), reference)."""
        with quantization_proxy(module.codec, self.term_proxy):
            x_hat_adv = rd.forward_padded(module.codec, adversarial)[0]
            reference = self.reference(module, source, clean)
        return module.lmbda * rd_distortion(x_hat_adv, reference, self.metric)

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
            super().__repr__()[:-1] + f", beta={self.beta}, term_proxy={self.term_proxy}, "
            f"detach={self.detach}, adversary={self.adversary})"
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

    def frozen_modules(self) -> dict[str, nn.Module]:
        # A submodule of the LightningModule, so that checkpoints keep it: a resumed run must not take
        # the resumed weights as its teacher.
        return {"teacher": self.teacher}

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
                f"method=latent needs the codec's analysis transform g_a; {type(attack.codec).__name__} "
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
            f"method.teacher={str(path)!r} holds a {codec_class}, the student is a {type(teacher).__name__}: "
            "the teacher must be the same architecture"
        )
    try:
        load_codec_state(teacher, state)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[:2])
        raise ValueError(
            f"method.teacher={str(path)!r} is not the student's architecture ({type(teacher).__name__} "
            f"as model= configures it): {detail}"
        ) from None
