"""Atomic file writes: every output goes to a hidden sibling first and is renamed into place.

Readers never see a half-written file and a killed run loses nothing already written, which
is what resumable batch jobs (prediction tables, caches, CV folds, checkpoints) rely on.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_json_atomic", "write_text_atomic"]

_UMASK = os.umask(0o022)  # read the process umask once (setting it is the only way) and restore it
os.umask(_UMASK)


def atomic_path(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a hidden sibling of ``path`` that keeps its suffixes, then rename.

    The temporary name ends like the target, so format-by-suffix writers (nibabel, numpy,
    safetensors, pandas) behave as for the real name. The data reach the disk before the rename,
    so a power cut cannot leave an empty file under the real name, and the folder is flushed after
    the rename, so the new name itself survives one (on systems that cannot open a folder, such as
    Windows, the rename is left to the file system). A failure leaves no temporary
    file. The result gets the permissions of a normally created file (``0o666`` minus the umask),
    also when the writer made its file private (safetensors does).

    Examples
    --------
    >>> atomic_path("out.txt", lambda tmp: tmp.write_text("done"))  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        _flush_to_disk(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        _flush_to_disk(path.parent)
    return path


def _flush_to_disk(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_path(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON atomically (NaN allowed, as Python's json writes it)."""
    return write_text_atomic(json.dumps(data, indent=indent, allow_nan=True) + "\n", path)
