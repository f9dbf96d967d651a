"""Real entropy coding: compress to bitstreams, count their bytes, decode them."""

from __future__ import annotations

import copy
import itertools

import torch
from compressai.latent_codecs import LatentCodec
from torch import Tensor, nn

from rnic import rd

# Where real coding runs unless told otherwise: CompressAI's range coder is meant for the CPU.
CODING_DEVICE = "cpu"


def device_of(codec: nn.Module) -> torch.device:
    """Where the codec's tensors live (the CPU for a module without any, e.g. a classical coder)."""
    tensor = next(itertools.chain(codec.parameters(), codec.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def coder_on(codec: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """`codec` itself if it lives on `device`, else a copy there with the same weights and tables.

    CompressAI's range coder is meant for the CPU: on a GPU the encoder's and the decoder's
    entropy parameters can differ in the last bit and desynchronise the stream, and the
    autoregressive codecs code serially anyway. Call again after the weights change.
    """
    device = torch.device(device)
    if device_of(codec) == device:
        return codec
    return copy.deepcopy(codec).to(device).eval()


def forward_is_decoded(codec: nn.Module) -> bool:
    """Whether the codec's eval-mode forward reconstructs what its decoder outputs. Not for a codec whose
    own forward runs a context model (a `context_prediction` module outside CompressAI's latent codecs:
    mbt2018, cheng2020 and codecs built like them): it rounds the latent without the predicted means,
    while the coder codes round(y - mean) + mean. CompressAI's latent codecs (the checkerboard and ELIC
    contexts) quantise around the means in their forward too, as rnic's own TCM and MLIC++ do. A codec
    class may declare its own `forward_is_decoded = True / False`."""
    declared = getattr(codec, "forward_is_decoded", None)
    if isinstance(declared, bool):
        return declared
    return not any(
        hasattr(module, "context_prediction") and not isinstance(module, LatentCodec)
        for module in codec.modules()
    )


def stream_bytes(strings: list[list[bytes]], index: int) -> int:
    """Bytes of image `index` across all the codec's latent streams."""
    return sum(len(stream[index]) for stream in strings)


@torch.no_grad()
def compress_decompress(coder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Compress and decompress `x` with the real entropy coder: (decoded image, bpp per image).

    Runs on `coder`'s device (see `coder_on`) and returns the decoded image on `x`'s device.
    The bpp is exact (float64): bytes of all the image's streams * 8 / (H * W) of the unpadded image.
    """
    x_padded, unpadding = rd.pad(x.to(device_of(coder)), rd.stride(coder))
    encoded = coder.compress(x_padded)
    decoded = coder.decompress(encoded["strings"], encoded["shape"])
    x_hat = rd.unpad(decoded["x_hat"], unpadding).clamp(0, 1).to(x.device)
    bits = [8 * stream_bytes(encoded["strings"], i) for i in range(x.shape[0])]
    return x_hat, torch.tensor(bits, dtype=torch.float64) / (x.shape[-2] * x.shape[-1])
