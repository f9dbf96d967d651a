"""What report.py reads of a run folder and how it tells runs apart: the run's config, its card, and a
short description and label of the codec, weights and attack it ran."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from rnic.classical import LABELS
from rnic.evaluation.card import CARD_FILE, read_json


def run_config(folder: Path) -> dict:
    """The resolved config of the run that owns `folder` (attack curves keep eps_* subfolders)."""
    for candidate in (folder, folder.parent):
        if (candidate / "config.yaml").is_file():
            return OmegaConf.to_container(OmegaConf.load(candidate / "config.yaml"))
    return {}


def weights_label(weights: str | None) -> str | None:
    """A weights file as `<run folder>/<file>` for rnic checkpoints (every run has a last.ckpt)."""
    if not weights:
        return None
    path = Path(weights)
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name


def describe(config: dict) -> dict:
    model = config.get("model", {})
    codec = model.get("codec", {})
    attack = config.get("attack", {})
    target = str(codec.get("_target_", "?")).rsplit(".", 1)[-1]
    if target == "ClassicalCodec":  # named as a reader names it: JPEG, WebP, ...
        target = LABELS.get(codec.get("format"), str(codec.get("format")))
    return {
        "codec": codec.get("arch") or target,
        "quality": model.get("quality"),
        "metric": model.get("metric"),
        "weights": "pretrained" if model.get("pretrained") else weights_label(model.get("weights")),
        "attack": str(attack.get("_target_", "?")).rsplit(".", 1)[-1],
    }


def read_card(folder: Path) -> dict | None:
    path = folder / CARD_FILE
    return read_json(path) if path.is_file() else None


def defense_of(row: dict) -> str | None:
    """The defence an attack run went through, as a reader names it (None: undefended): `jpeg` attacked
    through it (adaptive), `jpeg non-adaptive` attacked on the codec alone."""
    defense = row.get("defense")
    if not defense or defense == "none":
        return None
    return defense if row.get("adaptive", True) else f"{defense} non-adaptive"


def label(row: dict, *keys: str) -> str:
    """A line's name from `keys` of its row; `defense` names the defence it went through, if any."""
    row = {**row, "defense": defense_of(row)} if "defense" in keys else row

    def show(key):
        value = row[key]
        text = f"{value:g}" if isinstance(value, float) else f"{value}"
        return text if key in ("codec", "attack") else f"{key}={text}"

    return " ".join(show(k) for k in keys if row.get(k) is not None)
