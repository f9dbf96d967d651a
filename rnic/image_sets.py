"""Which images a run measured: a name (data source and split) and a short hash of the image list, so that
figures of different image sets are never compared or pooled as if they were one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def image_names(paths: list[Path]) -> list[str]:
    """Unique names: file stems, or where stems repeat (Vimeo's im1.png), the path below the
    images' common folder without suffix, '/' -> '_'."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [str(p.relative_to(root).with_suffix("")).replace(os.sep, "_") for p in paths]


def image_set(data: dict | None, split: str, names: list[str]) -> dict:
    """`{"name": "<source>/<split>", "hash": 8 hex digits, "images": n}`; the hash covers the image names
    in order and the split's centre crop (the same photos cropped otherwise are other pixels)."""
    data = data or {}
    source = data.get("source") or {}
    if source.get("root"):
        label = Path(str(source["root"])).name
    else:
        label = str(source.get("_target_", "images")).rsplit(".", 1)[-1].removesuffix("Images").lower()
    crop = data.get(f"{split}_crop")
    digest = hashlib.sha256(json.dumps({"images": list(names), "crop": crop}).encode()).hexdigest()
    return {"name": f"{label or 'images'}/{split}", "hash": digest[:8], "images": len(names)}


def set_label(entry: dict | None) -> str | None:
    """How a table and a figure name an image set: `sample/val #1a2b3c4d (4)`."""
    if not entry:
        return None
    return f"{entry['name']} #{entry['hash']} ({entry['images']})"
