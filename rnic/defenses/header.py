"""The header a defended codec writes beside the codec's streams: per image, the parameters its decoder
needs (the random transform drawn, the self-ensemble's index), in as few bits as they take, whole bytes
per image. Its layout (each field's owner and width) is computed here only: the rate counts it, compress
writes it, decompress reads it."""

from __future__ import annotations

import math
from collections.abc import Sequence


def bits_for(count: int) -> int:
    """Bits that tell one of `count` values apart."""
    return max(0, math.ceil(math.log2(count))) if count > 1 else 0


def header_layout(stages: Sequence, size: tuple[int, int], inner: Sequence = ()) -> list[tuple[int, int]]:
    """The header's fields of an image of `size`, in order: (owner, width in bits). Each image defense
    (`stages`, in order; owner: its index) with parameters the decoder needs (`fields(size)`: the count of
    values of each) at the size it sees, then each codec defense (`inner`; owner: len(stages) + its index)
    at the size the codec sees."""
    layout = []
    for index, defense in enumerate([*stages, *inner]):
        widths = [bits_for(count) for count in defense.fields(size)]
        if sum(widths):  # a defense's fields all go, or none: its decoder reads them in order
            layout += [(index, width) for width in widths]
        if index < len(stages):
            size = defense.out_size(size)
    return layout


def pack(values: Sequence[int], widths: Sequence[int]) -> bytes:
    """`values` in fields of `widths` bits, most significant first, in whole bytes (a stream grows by
    bytes): left-aligned, zero-padded."""
    total = sum(widths)
    number = 0
    for value, bits in zip(values, widths, strict=True):
        number = (number << bits) | value
    size = math.ceil(total / 8)
    return (number << (8 * size - total)).to_bytes(size, "big")


def unpack(data: bytes, widths: Sequence[int]) -> list[int]:
    number = int.from_bytes(data, "big") >> (8 * len(data) - sum(widths))
    values = []
    for bits in reversed(widths):
        values.append(number & ((1 << bits) - 1))
        number >>= bits
    return values[::-1]
