"""The defended codec an attack sees through: a codec behind defenses, itself a module with CompressAI's
interface (forward -> {x_hat, likelihoods}, compress / decompress, update, aux_loss, downsampling_factor).

Image defenses (rnic.defenses.image) run in their listed order before encoding, and the two-way ones undo
themselves in reverse order after decoding; codec defenses (rnic.defenses.inner: `self_ensemble`,
`latent_clamp`) act on the codec itself, wherever they are listed. The forward pass is what an adaptive
attacker differentiates (variants: the chosen one, the argmin held constant). compress() runs the real
pipeline and writes the side information a decoder needs into a header stream (`rnic.defenses.header`)
that counts in the bpp."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from rnic import rd
from rnic.attacks import rng
from rnic.defenses.header import header_layout, pack, unpack
from rnic.defenses.image import ImageDefense
from rnic.defenses.inner import CodecDefense


class DefendedCodec(nn.Module):
    """`codec` behind `defenses` (a mapping name -> defense, in order, or a sequence), with CompressAI's
    interface. `eot_samples`: draws an attack averages over when a defense is random."""

    def __init__(
        self, codec: nn.Module, defenses: Mapping[str, nn.Module] | Sequence[nn.Module], eot_samples=8
    ):
        super().__init__()
        defenses = list(defenses.values()) if isinstance(defenses, Mapping) else list(defenses)
        if int(eot_samples) < 1:
            raise ValueError(f"attack_run.eot_samples={eot_samples} must be >= 1")
        self.codec = codec
        self.stages = nn.ModuleList([d for d in defenses if isinstance(d, ImageDefense)])
        self.inner = nn.ModuleList([d for d in defenses if isinstance(d, CodecDefense)])
        choosing = [d for d in self.inner if d.variants > 1]
        if len(choosing) > 1:
            raise ValueError(f"defense: {[d.name for d in choosing]} each code several variants; use one")
        self.choosing = choosing[0] if choosing else CodecDefense()  # the one whose variants are tried
        for defense in self.inner:
            defense.check(codec)
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
        return sum(width for _, width in header_layout(self.stages, tuple(size), self.inner))

    def _choice_owner(self) -> int | None:
        """The header owner of the variant index (None: every image is coded one way)."""
        if self.choosing.variants == 1:
            return None
        return len(self.stages) + list(self.inner).index(self.choosing)

    @contextmanager
    def _installed(self):
        with ExitStack() as stack:
            for defense in self.inner:
                stack.enter_context(defense.installed(self.codec))
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
        with self._installed():
            if self.choosing.variants > 1:
                x_hat, likelihoods = self._closest_variant(inner)
            else:
                x_hat, likelihoods, _ = rd.forward_padded(self.codec, inner)
        x_hat = self._post(x_hat, params, sizes)
        bits = self.header_bits(size)
        if bits:
            likelihoods = {**likelihoods, "header": torch.full((x.shape[0], 1), 2.0**-bits, device=x.device)}
        return {"x_hat": x_hat, "likelihoods": likelihoods}

    def _closest_variant(self, x: Tensor) -> tuple[Tensor, dict]:
        """Every variant; per image the one closest to its input (the choice held constant: BPDA)."""
        branches, errors = [], []
        for k in range(self.choosing.variants):
            x_hat, likelihoods, _ = rd.forward_padded(self.codec, self.choosing.apply(x, k))
            x_hat = self.choosing.undo(x_hat, k)
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
        variants = self.choosing.variants
        best_err = torch.full((batch,), torch.inf)
        chosen = [0] * batch
        per_image: list = [None] * batch  # (strings of the image per stream, inner shape)
        with self._installed():
            for k in range(variants):
                padded, unpadding = rd.pad(self.choosing.apply(inner, k), self.inner_stride)
                encoded = self.codec.compress(padded)
                if variants > 1:
                    decoded = rd.unpad(
                        self.codec.decompress(encoded["strings"], encoded["shape"])["x_hat"], unpadding
                    )
                    err = rd.mse(self.choosing.undo(decoded, k).clamp(0, 1), inner).cpu()
                else:
                    err = torch.zeros(batch)
                for i in range(batch):
                    if float(err[i]) < float(best_err[i]):
                        best_err[i], chosen[i] = err[i], k
                        per_image[i] = ([s[i] for s in encoded["strings"]], encoded["shape"])
        layout = header_layout(self.stages, size, self.inner)
        owners, widths = [owner for owner, _ in layout], [width for _, width in layout]
        chooser = self._choice_owner()
        headers = []
        for i in range(batch):  # each owner's values, in its fields' order
            values = {s: iter(p[i].tolist()) for s, p in enumerate(params) if p is not None}
            values[chooser] = iter([chosen[i]])
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
        layout = header_layout(self.stages, size, self.inner)
        owners, widths = [owner for owner, _ in layout], [width for _, width in layout]
        chooser = self._choice_owner()
        images, stage_params = [], [[] for _ in self.stages]
        with self._installed():
            for i, header in enumerate(strings[-1]):
                values = unpack(header, widths)
                k = values[owners.index(chooser)] if chooser is not None else 0
                for s in range(len(self.stages)):
                    stage_params[s].append([v for v, o in zip(values, owners, strict=True) if o == s])
                streams = [[stream[i]] for stream in strings[:-1]]
                decoded = self.codec.decompress(streams, shape["inner"][i])["x_hat"]
                h, w = self.choosing.variant_size(core_size, k)
                _, unpadding = rd.padding(h, w, self.inner_stride)
                images.append(self.choosing.undo(rd.unpad(decoded, unpadding), k))
        x_hat = torch.cat(images)
        params = [
            torch.tensor(p, dtype=torch.long, device=x_hat.device) if s in owners else None
            for s, p in enumerate(stage_params)
        ]
        return {"x_hat": self._post(x_hat, params, sizes).clamp(0, 1)}
