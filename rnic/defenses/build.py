"""Defenses from a `defense=` config, the codec behind them, and attacks aimed at another codec."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from omegaconf import OmegaConf
from torch import nn

from rnic.defenses.codec import DefendedCodec
from rnic.defenses.image import ImageDefense
from rnic.defenses.inner import CodecDefense
from rnic.defenses.smoothing import CenterSmoothing, SmoothedCodec

# What a defence builds to: a subclass of one of these.
DEFENSE_BASES = (ImageDefense, CodecDefense, CenterSmoothing)


def build_defenses(spec: Mapping | Sequence[str] | None) -> dict[str, nn.Module]:
    """Defenses from a `defense=` config (name -> config with `_target_`, in order), from already built
    defenses, or from a list of names, each built from its rnic/conf/defense/<name>.yaml (on Hydra's search
    path; see rnic.config.config_group). `none` (or nothing) is no defense.

    A `_target_` may be any image defense or codec defense (a subclass of ImageDefense or CodecDefense,
    e.g. of a package of your own with its yaml on Hydra's search path)."""
    from rnic.config import build, config_group  # Hydra, not Lightning

    if not spec:
        return {}
    if isinstance(spec, str):
        spec = [spec]
    items = spec.items() if isinstance(spec, Mapping) else [(name, {}) for name in spec]
    defenses, options = {}, None
    for name, entry in items:
        if (name == "none" and not entry) or name == "seed":  # defense.seed: center smoothing's, inside it
            continue
        if isinstance(entry, nn.Module):
            defense = entry
        else:
            if not (entry and "_target_" in entry):  # a name: its yaml, with these settings over it
                options = options if options is not None else config_group("defense")
                if name not in options.get(name, {}):
                    known = [n for n in options if n != "none"]
                    raise ValueError(f"defense={name!r} is unknown; choose among: none, {', '.join(known)}")
                node = options[name][name]
                # Settings the yaml takes from a run's config (${model.weights}) are left to the class.
                own = {key: node[key] for key in node if not OmegaConf.is_interpolation(node, key)}
                entry = {**own, **dict(entry or {})}
            defense = build(entry)
        if not isinstance(defense, DEFENSE_BASES):
            raise ValueError(
                f"defense.{name}._target_ builds a {type(defense).__name__}, not an image or codec defense "
                "(rnic.defenses.ImageDefense, CodecDefense)"
            )
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
