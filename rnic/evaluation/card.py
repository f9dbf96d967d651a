"""Model cards: what exactly a train.py or attack.py run evaluated, written beside its results as
`card.json`, and checked against the run folder later (`python report.py --check RUN`)."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rnic.io import file_sha256, write_json

CARD_FILE = "card.json"
PACKAGE = Path(__file__).resolve().parent  # a path under it is recorded as rnic/...
# An absolute path inside a string: at its start, or after a space, '=', '[' or ','.
ABSOLUTE_PATH = re.compile(r"(?:^|(?<=[\s=\[,]))/[^\s,\]]+")
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


def data_licences(resolved: dict) -> dict:
    """`licences` of data=sample's photos (as their packages state them); other data sets are the user's."""
    source = (resolved.get("data") or {}).get("source") or {}
    if source.get("_target_") != "rnic.data.SampleImages":
        return {}
    from rnic.data import SampleImages  # Lightning: only for cards of data=sample runs

    return {"licences": SampleImages.licences(bool(source.get("extra_train")))}


def weights_entry(cfg: DictConfig) -> dict:
    model = cfg.model
    entry = {"pretrained": bool(model.get("pretrained")), "file": None, "sha256": None}
    if model.get("weights"):
        entry["file"] = str(Path(model.weights).resolve())  # made portable by write_card
        entry["sha256"] = file_sha256(model.weights)
    elif model.get("pretrained_file"):  # pretrained weights from a known file (rnic.config.codec_from_config)
        entry["file"], entry["sha256"] = model.pretrained_file, model.pretrained_sha256
    return entry


def portable_path(path: str | Path, folder: Path | None = None) -> str:
    """`path` as a card records it, without the machine's own folders: under rnic's package as rnic/...,
    under the run folder relative to it, under the working directory relative to it; elsewhere as it is."""
    resolved = Path(path).resolve()
    for base, prefix in ((PACKAGE, "rnic"), (folder, None), (Path.cwd(), None)):
        if base is not None and resolved.is_relative_to(Path(base).resolve()):
            relative = resolved.relative_to(Path(base).resolve())
            return str(Path(prefix) / relative) if prefix else str(relative)
    return str(path)


def portable(value, folder: Path | None = None):
    """Every absolute path in `value` (a card, or any part of it) made portable (`portable_path`)."""
    if isinstance(value, dict):
        return {k: portable(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, folder) for v in value]
    if isinstance(value, str):
        return ABSOLUTE_PATH.sub(lambda m: portable_path(m[0], folder), value)
    return value


def recorded_file(recorded: str, folder: Path) -> Path:
    """The file a card's path names (what `portable_path` recorded), looked up from the card's folder."""
    path = Path(recorded)
    if path.is_absolute():
        return path
    candidates = [folder / path, Path.cwd() / path]
    if path.parts[0] == "rnic":
        candidates.insert(0, PACKAGE.parent / path)
    return next((c for c in candidates if c.exists()), folder / path).resolve()


def command_line(argv: list[str]) -> str:
    """The command as typed: `python train.py ...` for a script, the command's name for a console script."""
    program = f"python {argv[0]}" if argv[0].endswith(".py") else Path(argv[0]).name
    return " ".join([program, *argv[1:]])


def build_card(cfg: DictConfig, kind: str, means: dict, images: int, split: str, attack: str | None) -> dict:
    """The card of a run: codec, weights (hash), data and split with the image count, threat model and
    attack with all its settings, versions, and the means the run reported."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    codec = resolved["model"]["codec"]
    attack_cfg = resolved.get("attack") or {}
    return {
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(sys.argv),
        "codec": codec.get("arch") or codec.get("format") or str(codec.get("_target_")),
        # With a rate target, a classical coder chooses the quality per image (results.json records it).
        "quality": None
        if resolved["model"].get("target_bpp") is not None
        else resolved["model"].get("quality"),
        "metric": resolved["model"].get("metric"),
        "codec_config": codec,
        "weights": weights_entry(cfg),
        "data": {"config": resolved.get("data"), "split": split, "images": images, **data_licences(resolved)},
        "threat": attack_cfg.get("threat"),
        "proxy": attack_cfg.get("proxy"),
        "attack": attack,
        "attack_config": attack_cfg,
        "defense": resolved.get("defense"),
        "versions": versions(),
        "means": means,
    }


def write_card(folder: Path, card: dict) -> Path:
    """`card.json` in `folder`, its paths portable: the command's as typed in the working directory."""
    written = {**portable(card, Path(folder)), "command": portable(card.get("command"))}
    return write_json(Path(folder) / CARD_FILE, written)


def read_json(path: Path) -> dict | None:
    """A results or card file, or None if it is not valid JSON (a truncated or hand-edited file)."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
