"""Lightning callbacks of rnic."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger


class LogReconstructions(L.Callback):
    """Source | reconstruction pairs of the first validation images, to W&B and TensorBoard."""

    def __init__(self, num_images: int = 4):
        self.num_images = num_images
        self.pairs: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.pairs = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for x, x_hat in zip(outputs["x"], outputs["x_hat"], strict=True):
            if len(self.pairs) < self.num_images:
                self.pairs.append(torch.cat([x, x_hat], dim=-1).float().cpu())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.pairs:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    "val/reconstructions",
                    images=list(self.pairs),
                    caption=[f"source | reconstruction {i}" for i in range(len(self.pairs))],
                    step=step,
                )
            elif isinstance(logger, TensorBoardLogger):
                for i, pair in enumerate(self.pairs):
                    logger.experiment.add_image(f"val/reconstruction_{i}", pair, step)
        self.pairs = []
