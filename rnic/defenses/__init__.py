"""Defenses around a learned codec, and the defended codec an attack sees through (independent of Lightning).

A defended codec (`DefendedCodec`, rnic.defenses.codec) is itself a module with CompressAI's interface, so
every attack, the ensembles and the real-bitstream figures work on it unchanged:

- image defenses (rnic.defenses.image) run in their listed order before encoding, and the two-way ones
  (`resize`, `random_transform`) undo themselves in reverse order after decoding;
- codec defenses (rnic.defenses.inner: `self_ensemble`; `latent_clamp` in rnic.defenses.latent) act on the
  codec itself, wherever they are listed: they may wrap it while it codes and code each image in several
  variants, the closest decoded one sent.

The forward pass is what an ADAPTIVE attacker differentiates: non-differentiable steps run for real in the
forward pass and pass a gradient by BPDA (JPEG: Pillow's libjpeg forward, kornia's differentiable JPEG
backward; bit depth: straight-through identity; median: a box filter of the same size; self-ensemble:
the chosen branch, the argmin held constant). Random defenses draw per image, from generators seeded
from the global RNG (`rnic.attacks.rng`), so a seed reproduces them and an image's draw does not depend
on its batch mates; an attack averages its objective over `eot_samples` draws (EOT, see
`rnic.attacks.Attack.value`). compress() runs the real pipeline and writes the side information a decoder
needs (the random transform drawn, the self-ensemble's index) into a header stream that counts in the bpp
(rnic.defenses.header).

The names below are the package's public API: the `_target_`s of rnic/conf/defense/*.yaml and what the rest of
rnic builds defenses with.
"""

from rnic.defenses.build import build_defenses, defended, retarget
from rnic.defenses.codec import DefendedCodec
from rnic.defenses.image import JPEG, BitDepth, Blur, ImageDefense, Median, Noise, RandomTransform, Resize
from rnic.defenses.inner import CodecDefense, SelfEnsemble
from rnic.defenses.latent import LatentClamp

__all__ = [
    "JPEG",
    "BitDepth",
    "Blur",
    "CodecDefense",
    "DefendedCodec",
    "ImageDefense",
    "LatentClamp",
    "Median",
    "Noise",
    "RandomTransform",
    "Resize",
    "SelfEnsemble",
    "build_defenses",
    "defended",
    "retarget",
]
