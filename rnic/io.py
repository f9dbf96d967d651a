"""Files written so that a crash never leaves a half-written one over a good one, and weights files whose
bytes change only when the weights do."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_torch(path: str | Path, obj: Any) -> Path:
    """`torch.save(obj)` written atomically, its bytes a function of `obj` alone: saved to a file, the
    archive's inner folder takes the (temporary) file's name, so equal weights would differ in bytes and
    SHA-256 at every save."""
    import torch  # report.py reads results without importing torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def equal_states(a: Any, b: Any) -> bool:
    """Two state dicts with the same keys and equal tensors (dtype, shape and device included); False for
    anything else."""
    import torch

    if not (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()):
        return False
    return all(
        isinstance(a[k], torch.Tensor)
        and isinstance(b[k], torch.Tensor)
        and (a[k].dtype, a[k].shape, a[k].device) == (b[k].dtype, b[k].shape, b[k].device)
        and torch.equal(a[k], b[k])
        for k in a
    )


def write_state(path: str | Path, state: dict) -> Path:
    """`write_torch(path, state)`, except where `path` already holds equal weights: a shipped file is kept
    byte for byte when its card is written again (git and the card's SHA-256 see no change). A file that
    cannot be read as weights is replaced."""
    import torch

    path = Path(path)
    try:
        existing = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    except Exception:  # truncated, foreign or refused by weights_only: not the same weights
        existing = None
    if equal_states(existing, state):
        return path
    return write_torch(path, state)


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (allow_nan=False): a NaN or infinity in `data` is a bug, not a value to write."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: str | Path, rows: list[dict], columns: tuple[str, ...]) -> Path:
    """`rows` as CSV with `columns` (other keys ignored, missing ones empty)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


def png_bytes(figure, dpi: int) -> bytes:
    """A matplotlib figure rendered as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_png(path: str | Path, figure, dpi: int) -> Path:
    data = png_bytes(figure, dpi)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
