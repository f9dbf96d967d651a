"""Model cards: what exactly a train.py or attack.py run evaluated, written beside its results as
`card.json`, and checked against the run folder later (`python report.py --check RUN`)."""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rnic.config import file_sha256
from rnic.io import write_json

CARD_FILE = "card.json"
LIBRARIES = (
    "rnic",
    "torch",
    "compressai",
    "lightning",
    "torchmetrics",
    "kornia",
    "imagecodecs",
    "hydra-core",
)
# Where each kind of run keeps its figures, and where in that file the means are.
RESULT_FILES = {"attack": ("results.json", "mean"), "train": ("final_metrics.json", None)}


def versions() -> dict[str, str | None]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def weights_entry(cfg: DictConfig) -> dict:
    model = cfg.model
    entry = {"pretrained": bool(model.get("pretrained")), "file": None, "sha256": None}
    if model.get("weights"):
        entry["file"] = str(Path(model.weights).resolve())
        entry["sha256"] = file_sha256(model.weights)
    return entry


def build_card(cfg: DictConfig, kind: str, means: dict, images: int, split: str, attack: str | None) -> dict:
    """The card of a run: codec, weights (hash), data and split with the image count, threat model and
    attack with all its settings, versions, and the means the run reported."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    codec = resolved["model"]["codec"]
    attack_cfg = resolved.get("attack") or {}
    return {
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "codec": codec.get("arch") or codec.get("format") or str(codec.get("_target_")),
        "quality": resolved["model"].get("quality"),
        "metric": resolved["model"].get("metric"),
        "codec_config": codec,
        "weights": weights_entry(cfg),
        "data": {"config": resolved.get("data"), "split": split, "images": images},
        "threat": attack_cfg.get("threat"),
        "proxy": attack_cfg.get("proxy"),
        "attack": attack,
        "attack_config": attack_cfg,
        "defense": resolved.get("defense"),
        "versions": versions(),
        "means": means,
    }


def write_card(folder: Path, card: dict) -> Path:
    return write_json(Path(folder) / CARD_FILE, card)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def check_card(folder: Path) -> list[str]:
    """Problems found between a run folder and its card (empty: the card describes the folder)."""
    folder = Path(folder)
    path = folder / CARD_FILE
    if not path.is_file():
        return [f"{path}: no model card"]
    card = json.loads(path.read_text())
    problems = []
    weights = card.get("weights") or {}
    if weights.get("file"):
        file = Path(weights["file"])
        if not file.is_file():
            problems.append(f"{file}: the weights file of {path} is missing")
        elif file_sha256(file) != weights.get("sha256"):
            problems.append(f"{file}: its SHA-256 is not the one {path} records (the weights changed)")
    name, key = RESULT_FILES[card["kind"]]
    results_path = folder / name
    if not results_path.is_file():
        return [*problems, f"{results_path}: missing, {path} describes it"]
    results = json.loads(results_path.read_text())
    means = results[key] if key else {k: v for k, v in results.items() if k != "start"}
    for field, value in card["means"].items():
        if not _same(means.get(field), value):
            problems.append(f"{results_path}: {field}={means.get(field)!r}, {path} says {value!r}")
    if card["kind"] == "attack" and len(results.get("images", [])) != card["data"]["images"]:
        problems.append(
            f"{results_path}: {len(results['images'])} image(s), {path} says {card['data']['images']}"
        )
    return problems
