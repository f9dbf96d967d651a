"""What CompressAI's range coder takes from a Gaussian conditional, for rnic's own codecs."""

from __future__ import annotations

from compressai.entropy_models import GaussianConditional


def coder_tables(conditional: GaussianConditional) -> tuple[list, list, list]:
    """The conditional's (quantized CDFs, CDF lengths, offsets) as the rANS coder's lists."""
    return (
        conditional.quantized_cdf.tolist(),
        conditional.cdf_length.reshape(-1).int().tolist(),
        conditional.offset.reshape(-1).int().tolist(),
    )
