"""Budgets as the command line gives them: `attack.eps=8/255` reaches the config as the string '8/255'
(Hydra has no arithmetic), and budgets of k/255 print as k/255. No torch here: the entry points convert
before anything heavy loads."""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig, open_dict

FRACTION = re.compile(r"\s*(\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*")
# Config keys that hold budgets or step sizes and may be written as fractions.
FRACTION_KEYS = ("eps", "alpha")


def parse_fraction(value, key: str = "attack.eps"):
    """`value` as a number: a number stays, a string a/b (8/255) is divided out, a list is converted item by
    item; anything else is refused in one line naming `key`."""
    if isinstance(value, (list, tuple, ListConfig)):
        return [parse_fraction(item, key) for item in value]
    if isinstance(value, str):
        match = FRACTION.fullmatch(value)
        if match is None or float(match[2]) == 0:
            raise ValueError(f"{key}={value!r} is neither a number nor a fraction a/b such as 8/255")
        return float(match[1]) / float(match[2])
    return value


def parse_fractions(cfg: DictConfig, prefix: str = "") -> None:
    """Every `eps` or `alpha` of `cfg` given as a fraction (or a list holding one), converted in place."""
    for key, value in cfg.items_ex(resolve=False):
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            parse_fractions(value, f"{path}.")
        elif key in FRACTION_KEYS and needs_parsing(value):
            with open_dict(cfg):
                cfg[key] = parse_fraction(value, path)


def needs_parsing(value) -> bool:
    if isinstance(value, ListConfig):
        return any(needs_parsing(item) for item in value)
    return isinstance(value, str) and not value.startswith("${")  # an interpolation resolves elsewhere


def format_budget(value: float) -> str:
    """8/255 for a budget that is k/255 (to a float's precision), else the number (`1e-4`)."""
    levels = value * 255
    if value > 0 and abs(levels - round(levels)) < 1e-9:
        return f"{round(levels)}/255"
    return f"{value:g}"
