"""Bundled model weights: the manifest in ``ermoe_ba/weights`` and name -> file resolution."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ermoe_ba.atomic import write_json_atomic

__all__ = ["DEFAULT_MODEL", "bundled_models", "register_bundled_model", "resolve_checkpoint", "sha256_of"]

DEFAULT_MODEL = "default"


def _weights_dir() -> Path:
    return Path(str(resources.files("ermoe_ba") / "weights"))


def bundled_models() -> dict[str, Any]:
    """The weights manifest: ``{"default": name, "models": {name: entry}}`` (empty if none ship)."""
    manifest = _weights_dir() / "manifest.json"
    if not manifest.is_file():
        return {"default": None, "models": {}}
    return json.loads(manifest.read_text())


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes.

    Remembered per file version (path, inode, size, modification time): loading a bundled model
    checks its hash and then names the weights by it, and that reads the file once.
    """
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_checkpoint(name_or_path: str | Path = DEFAULT_MODEL) -> Path:
    """A checkpoint file for a bundled model name (or ``"default"``) or a path.

    Bundled files are checked against the sha256 in the manifest.

    Raises
    ------
    FileNotFoundError
        Neither a bundled name nor an existing file; the message lists the bundled names.
    ValueError
        A bundled file whose checksum does not match its manifest entry.
    """
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    manifest = bundled_models()
    name = manifest.get("default") if str(name_or_path) == DEFAULT_MODEL else str(name_or_path)
    entry = manifest["models"].get(name) if name else None
    if entry is None:
        known = ", ".join(sorted(manifest["models"])) or "none"
        raise FileNotFoundError(
            f"model {str(name_or_path)!r} is neither a checkpoint file nor a bundled model (bundled: {known})"
        )
    path = _weights_dir() / entry["file"]
    if sha256_of(path) != entry["sha256"]:
        raise ValueError(f"{path}: sha256 does not match the weights manifest; reinstall ermoe-ba")
    return path


def register_bundled_model(
    checkpoint: str | Path,
    name: str,
    details: dict[str, Any],
    default: bool = True,
    weights_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Add (or replace) a checkpoint in the weights manifest, with its sha256; rewrite atomically.

    ``checkpoint`` must already lie in the weights folder; ``details`` (architecture, training
    data, licence, cross-validated metrics, command) is stored as given.
    """
    folder = Path(weights_dir) if weights_dir is not None else _weights_dir()
    checkpoint = Path(checkpoint)
    if checkpoint.resolve().parent != folder.resolve():
        raise ValueError(f"{checkpoint} must be inside the weights folder {folder}")
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"default": None, "models": {}}
    manifest["models"][name] = {"file": checkpoint.name, "sha256": sha256_of(checkpoint), **details}
    if default:
        manifest["default"] = name
    write_json_atomic(manifest_path, manifest, indent=2)
    return manifest
