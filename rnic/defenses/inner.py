"""Defenses that act on the codec itself rather than on its input image, wherever they are listed.

A codec defense may wrap the codec while it codes (`installed`: latent clamping hooks the analysis
transform) and may code each image in several variants (`variants` > 1: the self-ensemble's 8 flips and
rotations). The defended codec then keeps, per image, the variant whose decoded reconstruction is closest
to its input, and sends its index in the header (`fields`)."""

from __future__ import annotations

from contextlib import contextmanager

from torch import Tensor, nn

from rnic.defenses.dihedral import dihedral, inverse_dihedral, transformed_size


class CodecDefense(nn.Module):
    """The base of a defense on the codec: by default one variant, the image itself, and no wrapping."""

    name = "?"
    random = False
    variants = 1

    def check(self, codec: nn.Module) -> None:
        """Refuse a codec this defense cannot act on, before any image is coded."""

    @contextmanager
    def installed(self, codec: nn.Module):
        """Within the block, `codec` codes as this defense has it (forward, compress and decompress)."""
        yield

    def apply(self, x: Tensor, k: int) -> Tensor:
        """Variant `k` of the codec's input."""
        return x

    def undo(self, x_hat: Tensor, k: int) -> Tensor:
        """Variant `k`'s reconstruction, back in the input's geometry."""
        return x_hat

    def variant_size(self, size: tuple[int, int], k: int) -> tuple[int, int]:
        return tuple(size)

    def fields(self, size: tuple[int, int]) -> list[int]:
        """What the decoder needs per image: the variant sent, when there is a choice."""
        return [self.variants] if self.variants > 1 else []

    def extra_repr(self) -> str:
        return f"variants={self.variants}" if self.variants > 1 else ""


class SelfEnsemble(CodecDefense):
    """Chen & Ma's geometric self-ensemble: code all 8 flips / rotations, keep the one whose decoded
    reconstruction (inverted) is closest (MSE) to the input, and send its index in 3 header bits."""

    name = "self_ensemble"
    variants = 8

    def apply(self, x: Tensor, k: int) -> Tensor:
        return dihedral(x, k)

    def undo(self, x_hat: Tensor, k: int) -> Tensor:
        return inverse_dihedral(x_hat, k)

    def variant_size(self, size: tuple[int, int], k: int) -> tuple[int, int]:
        return transformed_size(size, k)
