"""The defended codec an attack sees through: a codec behind defenses, itself a module with CompressAI's
interface (forward -> {x_hat, likelihoods}, compress / decompress, update, aux_loss, downsampling_factor).

Image defenses run in their listed order before encoding, and the two-way ones undo themselves in reverse
order after decoding; `self_ensemble` and `latent_clamp` act on the codec itself, wherever they are listed.
The forward pass is what an adaptive attacker differentiates (the self-ensemble: the chosen branch, the
argmin held constant). compress() runs the real pipeline and writes the side information a decoder needs
into a header stream (`rnic.defenses.header`) that counts in the bpp."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch
from compressai.ops import compute_padding
from torch import Tensor, nn

from rnic import rd
from rnic.attacks import rng
from rnic.defenses.dihedral import dihedral, inverse_dihedral, transformed_size
from rnic.defenses.header import SELF_ENSEMBLE, header_layout, pack, unpack
from rnic.defenses.image import ImageDefense
from rnic.defenses.latent import LatentClamp


class SelfEnsemble(nn.Module):
    """Chen & Ma's geometric self-ensemble: code all 8 flips / rotations, keep the one whose decoded
    reconstruction (inverted) is closest (MSE) to the input, and send its index in 3 header bits."""

    name = "self_ensemble"
    random = False


class DefendedCodec(nn.Module):
    """`codec` behind `defenses` (a mapping name -> defense, in order, or a sequence), with CompressAI's
    interface. `eot_samples`: draws an attack averages over when a defense is random."""

    def __init__(
        self, codec: nn.Module, defenses: Mapping[str, nn.Module] | Sequence[nn.Module], eot_samples=8
    ):
        super().__init__()
        defenses = list(defenses.values()) if isinstance(defenses, Mapping) else list(defenses)
        if int(eot_samples) < 1:
            raise ValueError(f"attack.eot_samples={eot_samples} must be >= 1")
        self.codec = codec
        self.stages = nn.ModuleList([d for d in defenses if isinstance(d, ImageDefense)])
        self.ensemble = any(isinstance(d, SelfEnsemble) for d in defenses)
        clamps = [d for d in defenses if isinstance(d, LatentClamp)]
        self.clamp = clamps[0] if clamps else None
        if self.clamp is not None:
            if not hasattr(codec, "g_a"):
                raise ValueError(
                    f"defense.latent_clamp: {type(codec).__name__} has no analysis transform g_a"
                )
            channels = _latent_channels(codec)
            if channels is not None and channels != self.clamp.low.numel():
                raise ValueError(
                    f"defense.latent_clamp: the stored ranges have {self.clamp.low.numel()} channels, "
                    f"the codec's latent has {channels} (ranges of another codec?)"
                )
        self.names = [d.name for d in defenses]
        self.eot_samples = int(eot_samples)

    # CompressAI's interface ---------------------------------------------------------------------------

    @property
    def downsampling_factor(self) -> int:
        return 1  # any size: the codec's own padding happens inside, after the image defenses

    @property
    def inner_stride(self) -> int:
        return rd.stride(self.codec)

    @property
    def random(self) -> bool:
        return any(stage.random for stage in self.stages)

    def __getattr__(self, name: str):
        if name == "context_prediction":  # autoregressive codecs are scored by real coding (rnic.attacks)
            return getattr(self._modules["codec"], name)
        return super().__getattr__(name)

    def update(self, scale_table=None, force: bool = False) -> bool:
        return (
            self.codec.update(force=force) if scale_table is None else self.codec.update(scale_table, force)
        )

    def aux_loss(self) -> Tensor:
        return self.codec.aux_loss()

    def check_size(self, size: tuple[int, int]) -> None:
        """Refuse an image size some defense cannot handle, before any image is coded."""
        size = tuple(size)
        for stage in self.stages:
            stage.check_size(size, self.inner_stride)
            size = stage.out_size(size)

    def header_bits(self, size: tuple[int, int]) -> int:
        return sum(width for _, width in header_layout(self.stages, tuple(size), self.ensemble))

    @contextmanager
    def _clamped(self):
        if self.clamp is None:
            yield
        else:
            with self.clamp.installed(self.codec):
                yield

    def _pre(self, x: Tensor) -> tuple[Tensor, list, list]:
        generators = rng.image_generators(x.shape[0], x.device) if self.random else None
        params, sizes = [], []
        for stage in self.stages:
            sizes.append(tuple(x.shape[-2:]))
            x, p = stage.encode(x, generators)
            params.append(p)
        return x, params, sizes

    def _post(self, x_hat: Tensor, params: list, sizes: list) -> Tensor:
        for stage, p, size in zip(reversed(self.stages), reversed(params), reversed(sizes), strict=True):
            x_hat = stage.decode(x_hat, p, size)
        return x_hat

    def forward(self, x: Tensor) -> dict:
        size = tuple(x.shape[-2:])
        inner, params, sizes = self._pre(x)
        with self._clamped():
            if self.ensemble:
                x_hat, likelihoods = self._ensemble_forward(inner)
            else:
                x_hat, likelihoods, _ = rd.forward_padded(self.codec, inner)
        x_hat = self._post(x_hat, params, sizes)
        bits = self.header_bits(size)
        if bits:
            likelihoods = {**likelihoods, "header": torch.full((x.shape[0], 1), 2.0**-bits, device=x.device)}
        return {"x_hat": x_hat, "likelihoods": likelihoods}

    def _ensemble_forward(self, x: Tensor) -> tuple[Tensor, dict]:
        """All 8 branches; per image the one closest to its input (the choice held constant: BPDA)."""
        branches, errors = [], []
        for k in range(8):
            x_hat, likelihoods, _ = rd.forward_padded(self.codec, dihedral(x, k))
            x_hat = inverse_dihedral(x_hat, k)
            branches.append((x_hat, {n: lk.flatten(1) for n, lk in likelihoods.items()}))
            errors.append(rd.mse(x_hat.detach().clamp(0, 1), x.detach()))
        choice = torch.stack(errors).argmin(0)  # (B,)
        x_hat = torch.stack([b[0] for b in branches])[choice, torch.arange(x.shape[0])]
        likelihoods = {
            name: torch.stack([b[1][name] for b in branches])[choice, torch.arange(x.shape[0])]
            for name in branches[0][1]
        }
        return x_hat, likelihoods

    @torch.no_grad()
    def compress(self, x: Tensor) -> dict:
        size = tuple(x.shape[-2:])
        inner, params, sizes = self._pre(x)
        batch = x.shape[0]
        candidates = range(8) if self.ensemble else [0]
        best_err = torch.full((batch,), torch.inf)
        chosen = [0] * batch
        per_image: list = [None] * batch  # (strings of the image per stream, inner shape)
        with self._clamped():
            for k in candidates:
                image = dihedral(inner, k)
                padded, unpadding = rd.pad(image, self.inner_stride)
                encoded = self.codec.compress(padded)
                if self.ensemble:
                    decoded = self.codec.decompress(encoded["strings"], encoded["shape"])["x_hat"]
                    err = rd.mse(inverse_dihedral(rd.unpad(decoded, unpadding), k).clamp(0, 1), inner).cpu()
                else:
                    err = torch.zeros(batch)
                for i in range(batch):
                    if float(err[i]) < float(best_err[i]):
                        best_err[i], chosen[i] = err[i], k
                        per_image[i] = ([s[i] for s in encoded["strings"]], encoded["shape"])
        layout = header_layout(self.stages, size, self.ensemble)
        owners, widths = [owner for owner, _ in layout], [width for _, width in layout]
        headers = []
        for i in range(batch):  # each owner's values, in its fields' order
            values = {s: iter(p[i].tolist()) for s, p in enumerate(params) if p is not None}
            values[SELF_ENSEMBLE] = iter([chosen[i]])
            headers.append(pack([next(values[owner]) for owner in owners], widths))
        streams = len(per_image[0][0])
        strings = [[per_image[i][0][j] for i in range(batch)] for j in range(streams)] + [headers]
        return {"strings": strings, "shape": {"size": size, "inner": [per_image[i][1] for i in range(batch)]}}

    @torch.no_grad()
    def decompress(self, strings: list, shape: dict) -> dict:
        size = tuple(shape["size"])
        sizes, stage_size = [], size
        for stage in self.stages:
            sizes.append(stage_size)
            stage_size = stage.out_size(stage_size)
        core_size = stage_size
        layout = header_layout(self.stages, size, self.ensemble)
        owners, widths = [owner for owner, _ in layout], [width for _, width in layout]
        images, stage_params = [], [[] for _ in self.stages]
        for i, header in enumerate(strings[-1]):
            values = unpack(header, widths)
            k = values[-1] if self.ensemble else 0
            for s in range(len(self.stages)):
                stage_params[s].append([v for v, o in zip(values, owners, strict=True) if o == s])
            decoded = self.codec.decompress([[stream[i]] for stream in strings[:-1]], shape["inner"][i])[
                "x_hat"
            ]
            h, w = transformed_size(core_size, k)
            _, unpadding = compute_padding(h, w, min_div=self.inner_stride)
            images.append(inverse_dihedral(rd.unpad(decoded, unpadding), k))
        x_hat = torch.cat(images)
        params = [
            torch.tensor(p, dtype=torch.long, device=x_hat.device) if s in owners else None
            for s, p in enumerate(stage_params)
        ]
        return {"x_hat": self._post(x_hat, params, sizes).clamp(0, 1)}


def _latent_channels(codec: nn.Module) -> int | None:
    """The number of channels of y (M for the zoo codecs), read from g_a's last convolution."""
    convs = [m for m in codec.g_a.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not convs:
        return None
    last = convs[-1]
    return last.out_channels
