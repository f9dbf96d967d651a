"""Building library objects from the composed Hydra configs, shared by train.py and attack.py.

Nothing here imports Lightning: attack.py's job and notebooks build codecs and attacks alone.
"""

from __future__ import annotations

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from rnic.classical import ClassicalCodec
from rnic.codecs import load_weights, pretrained_file
from rnic.config_groups import CONF, config_group  # noqa: F401  (imported from here too)
from rnic.io import file_sha256


def build(config: DictConfig, **kwargs):
    """Hydra's instantiate, re-raising a constructor's own error (which names the bad key) unwrapped."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise err.__cause__ from None
        raise


def has_weights(model: DictConfig) -> bool:
    """Whether `model` names weights: a file (`model.weights`) or the shipped or zoo ones (`pretrained`)."""
    return bool(model.get("weights") or model.get("pretrained"))


def untrained(model: DictConfig, codec: torch.nn.Module) -> bool:
    """Whether `codec` is a learned codec left at its random initialisation: no weights named and no
    `model.allow_random_init` (a classical coder has nothing to learn)."""
    return not (has_weights(model) or model.get("allow_random_init") or isinstance(codec, ClassicalCodec))


def codec_from_config(cfg: DictConfig) -> torch.nn.Module:
    """The codec of `cfg.model`, with `model.weights` loaded when given (they take precedence over
    `model.pretrained`). Pretrained weights from a known file are recorded in `cfg.model` like a
    weights file: `pretrained_file` and `pretrained_sha256`, for config.yaml, the card and the run key."""
    model = cfg.model
    if model.get("weights") and model.get("pretrained"):
        with open_dict(cfg):
            model.pretrained = False
    codec = build(model.codec)
    if model.get("weights"):
        load_weights(codec, model.weights)
    elif model.get("pretrained") and model.codec.get("arch"):
        path = pretrained_file(model.codec.arch, model.metric, model.quality, model.get("robust"))
        if path is not None:
            with open_dict(cfg):
                model.pretrained_file, model.pretrained_sha256 = str(path), file_sha256(path)
    return codec


def attack_spec(attack: DictConfig) -> tuple[dict, list]:
    """Split an `attack=` config into (attack constructor config without its budget, budgets)."""
    spec = OmegaConf.to_container(attack, resolve=True)
    eps = spec.pop("eps", None)
    return spec, list(eps) if isinstance(eps, list) else [eps]


def build_attacks(attack: DictConfig, codec: torch.nn.Module) -> list:
    """One attack on `codec` per budget of `attack.eps` (null: the attack's own default)."""
    spec, budgets = attack_spec(attack)
    make = build(OmegaConf.create(spec))
    return [make(codec, **({} if eps is None else {"eps": eps})) for eps in budgets]
