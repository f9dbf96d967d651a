"""A callback for the DDP tests: every rank writes its codec weights at the end of training."""

from pathlib import Path

import lightning as L
import torch


class SaveRankWeights(L.Callback):
    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.codec.state_dict().items()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")
