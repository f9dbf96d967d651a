"""The exact count of the codec passes a training step costs, measured by hooks on the codec's forward.

One pass is one forward of the codec whose graph a backward then runs through, on as many images as the
training batch holds: an attack step on half of the batch is half a pass, a replay of `free` is one pass.
Forwards without a backward (the attack's clean reference, the teacher, the guard's comparison) are
counted apart as forward passes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


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
