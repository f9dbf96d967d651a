"""Lightning callbacks and plugins of rnic."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from rnic.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing through a temporary file and an atomic rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


class LogReconstructions(L.Callback):
    """Source | reconstruction (| adversarial | its reconstruction, when validation attacks) of the
    first validation images, to W&B and TensorBoard."""

    def __init__(self, num_images: int = 4):
        self.num_images = num_images
        self.pairs: list[torch.Tensor] = []
        self.layout = "source | reconstruction"  # what each logged image shows, left to right

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.pairs = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or not trainer.is_global_zero or dataloader_idx:  # val's images only
            return
        attacked = "x_adv" in outputs
        keys = ["x", "x_hat"] + (["x_adv", "x_hat_adv"] if attacked else [])
        self.layout = "source | reconstruction" + (" | adversarial | its reconstruction" if attacked else "")
        for images in zip(*(outputs[k] for k in keys), strict=True):
            if len(self.pairs) < self.num_images:
                self.pairs.append(torch.cat(images, dim=-1).float().cpu())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.pairs:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    "val/reconstructions",
                    images=list(self.pairs),
                    caption=[f"image {i}: {self.layout}" for i in range(len(self.pairs))],
                    step=step,
                )
            elif isinstance(logger, TensorBoardLogger):
                for i, pair in enumerate(self.pairs):
                    logger.experiment.add_image(f"val/reconstruction_{i}", pair, step)
        self.pairs = []


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, counting optimizer steps out of `trainer.max_steps` rather than batches of the
    epoch: a resumed run shows where it resumed (e.g. 300/600), and epochs of repeated images do not
    restart the count. A run that stops at `module.max_passes` counts codec passes out of those."""

    @staticmethod
    def progress(trainer, pl_module) -> tuple[float, float]:
        """(done, total): codec passes under module.max_passes, else optimizer steps."""
        max_passes = getattr(pl_module, "max_passes", None)
        if max_passes:
            return pl_module.passes_total, max_passes
        return trainer.global_step, trainer.max_steps

    def on_train_start(self, trainer, pl_module, *args) -> None:
        super().on_train_start(trainer, pl_module, *args)
        done, total = self.progress(trainer, pl_module)
        if total > 0:
            self.train_progress_bar.reset(total=total)
            self.train_progress_bar.initial = self.train_progress_bar.n = done
            if getattr(pl_module, "max_passes", None):
                self.train_progress_bar.unit = "pass"
            self.train_progress_bar.refresh()

    def on_train_epoch_start(self, trainer, *args) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        done, total = self.progress(trainer, pl_module)
        if self._should_update(trainer.global_step, trainer.max_steps) or done >= total:
            bar.n = round(done, 1)
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)
