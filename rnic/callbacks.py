"""Lightning callbacks of rnic."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger


class LogReconstructions(L.Callback):
    """Source | reconstruction (| adversarial | its reconstruction, when validation attacks) of the
    first validation images, to W&B and TensorBoard."""

    def __init__(self, num_images: int = 4):
        self.num_images = num_images
        self.pairs: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.pairs = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        keys = ["x", "x_hat"] + (["x_adv", "x_hat_adv"] if "x_adv" in outputs else [])
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
                    caption=[f"image {i}" for i in range(len(self.pairs))],
                    step=step,
                )
            elif isinstance(logger, TensorBoardLogger):
                for i, pair in enumerate(self.pairs):
                    logger.experiment.add_image(f"val/reconstruction_{i}", pair, step)
        self.pairs = []
