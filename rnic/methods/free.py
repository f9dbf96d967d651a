"""`method=free` (Shafahi et al. 2019): each batch replayed, one backward per replay giving the codec's
gradient and the input gradient that moves a perturbation carried from replay to replay."""

from __future__ import annotations

import torch
from torch import Tensor

from rnic.attacks import Attack, Threat
from rnic.attacks.base import per_image
from rnic.methods.base import Step, TrainingMethod, rd_step


def threat_of(attack: Attack, method: str) -> Threat:
    """The threat model of the configured attack (free and fast move inside it themselves)."""
    threat = getattr(attack, "threat_model", None)
    if threat is None:
        raise ValueError(
            f"method={method} needs an attack with a threat model (attack=linf, l2, apgd or auto); "
            f"{type(attack).__name__} has none"
        )
    return threat


class FreeTraining(TrainingMethod):
    """`free` (Shafahi et al. 2019): each batch replayed `replays` times; every replay is one optimizer
    update and one training step. The perturbation of the first `ratio` of the batch is moved by one
    budget-sized ascent step on the input gradient of the same backward, projected onto the threat's
    set, and carried over to the next replay and the next batch."""

    name = "free"

    def __init__(self, attack: Attack, replays: int = 4, **kwargs):
        super().__init__(attack, **kwargs)
        if int(replays) != replays or int(replays) < 1:
            raise ValueError(f"method.replays={replays} must be an integer >= 1 (free's replays per batch)")
        self.replays = int(replays)
        self.threat = threat_of(attack, self.name)
        self._held: Tensor | None = None
        self._replay = 0
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None
        self._delta: Tensor | None = None

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
        inputs, targets = self.mixed(adversarial, x)
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
