"""On-disk cache of conformed volumes, keyed by file content, preprocessing config and code version.

Each entry is ``<key>.npy`` (the float32 volume) and ``<key>.json`` (status, QC, transform,
timings); both are written to a temporary name and moved into place with ``os.replace``, so a
reader never sees half an entry and concurrent workers can share one cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ermoe_ba.atomic import atomic_path, write_text_atomic
from ermoe_ba.models.config import PreprocessConfig

__all__ = [
    "CONFORM_CODE_VERSION",
    "cache_key",
    "default_cache_dir",
    "file_digest",
    "load_entry",
    "save_entry",
]

# Bump whenever a change to the conform code changes its output, so old entries are not reused.
CONFORM_CODE_VERSION = "conform-1"


def default_cache_dir() -> Path:
    """``$ERMOE_BA_CACHE`` if set, else ``~/.cache/ermoe-ba/conformed``."""
    env = os.environ.get("ERMOE_BA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ermoe-ba" / "conformed"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes; for a folder (DICOM series), of every file's relative name and bytes."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_key(digest: str, config: PreprocessConfig) -> str:
    """The entry name for a file digest under ``config`` and the current code version."""
    text = f"{digest}:{config.cache_key()}:{CONFORM_CODE_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()


def save_entry(cache_dir: str | Path, key: str, volume: np.ndarray | None, meta: dict[str, Any]) -> None:
    """Store one entry; the JSON goes last, so its presence means the volume is complete."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if volume is not None:
        atomic_path(cache_dir / f"{key}.npy", lambda tmp: np.save(tmp, np.asarray(volume, dtype=np.float32)))
    write_text_atomic(json.dumps(meta, sort_keys=True), cache_dir / f"{key}.json")


def load_entry(cache_dir: str | Path, key: str) -> tuple[np.ndarray | None, dict[str, Any]] | None:
    """The stored ``(volume, meta)`` or ``None`` when absent or unreadable (then it is recomputed)."""
    cache_dir = Path(cache_dir)
    meta_path = cache_dir / f"{key}.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        volume_path = cache_dir / f"{key}.npy"
        volume = np.load(volume_path, allow_pickle=False) if volume_path.exists() else None
    except (OSError, ValueError):
        return None
    if meta.get("status") != "error" and volume is None:
        return None
    return volume, meta
