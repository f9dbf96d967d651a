"""Defenses from a `defense=` config, the codec behind them, and attacks aimed at another codec."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from torch import nn

from rnic.defenses.codec import DefendedCodec
from rnic.defenses.image import JPEG, BitDepth, Blur, ImageDefense, Median, Noise, RandomTransform, Resize
from rnic.defenses.inner import CodecDefense, SelfEnsemble
from rnic.defenses.latent import LatentClamp
from rnic.smoothing import CenterSmoothing, SmoothedCodec

# rnic's defenses, each named by its `name` (the key of its conf/defense/<name>.yaml).
CLASSES = (
    JPEG, Blur, Median, BitDepth, Resize, Noise, RandomTransform, SelfEnsemble, LatentClamp, CenterSmoothing,
)  # fmt: skip
NAMED = {cls.name: cls for cls in CLASSES}


def build_defenses(spec: Mapping | Sequence[str] | None) -> dict[str, nn.Module]:
    """Defenses from a `defense=` config (name -> config with `_target_`, in order), from already built
    defenses, or from a list of names with default settings. `none` (or nothing) is no defense.

    A `_target_` may be any image defense or codec defense (a subclass of ImageDefense or CodecDefense,
    e.g. of a package of your own with its yaml on Hydra's search path); rnic's own names also build from
    their name alone."""
    from rnic.config import build  # Hydra, not Lightning

    if not spec:
        return {}
    if isinstance(spec, str):
        spec = [spec]
    items = spec.items() if isinstance(spec, Mapping) else [(name, {}) for name in spec]
    defenses = {}
    for name, entry in items:
        if name == "none" and not entry:
            continue
        configured = isinstance(entry, nn.Module) or bool(entry and "_target_" in entry)
        if name not in NAMED and not configured:
            raise ValueError(f"defense={name!r} is unknown; choose among: none, {', '.join(NAMED)}")
        if isinstance(entry, nn.Module):
            defense = entry
        elif entry and "_target_" in entry:
            defense = build(entry)
        else:
            defense = NAMED[name](**dict(entry or {}))
        expected = NAMED.get(name, (ImageDefense, CodecDefense))
        if not isinstance(defense, expected):
            what = (
                f"a {name} defense"
                if name in NAMED
                else "an image or codec defense (rnic.defenses.ImageDefense, CodecDefense)"
            )
            raise ValueError(f"defense.{name}._target_ builds a {type(defense).__name__}, not {what}")
        defenses[name] = defense
    return defenses


def defended(codec: nn.Module, spec, eot_samples: int = 8) -> nn.Module:
    """`codec` behind the defenses of `spec` (see `build_defenses`), or `codec` itself without any.
    Center smoothing takes the codec alone (other defenses would change what it certifies)."""
    defenses = build_defenses(spec)
    smoothing = [d for d in defenses.values() if isinstance(d, CenterSmoothing)]
    if smoothing and len(defenses) > 1:
        raise ValueError(
            f"defense={list(defenses)}: center_smoothing certifies the codec alone; use it alone"
        )
    if smoothing:
        return SmoothedCodec(codec, smoothing[0], eot_samples=eot_samples)
    return DefendedCodec(codec, defenses, eot_samples=eot_samples) if defenses else codec


def retarget(attack, codec: nn.Module):
    """A copy of `attack` (and of an ensemble's members) that attacks `codec` with the same settings."""
    clone = copy.copy(attack)
    clone.codec = codec
    if isinstance(getattr(attack, "members", None), dict):
        clone.members = {name: retarget(member, codec) for name, member in attack.members.items()}
    return clone
