"""Atomic writes: every output is written to a temporary file in its folder, then renamed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import pandas as pd

__all__ = ["atomic_path", "save_img", "write_bytes", "write_table", "write_text"]


def atomic_path(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a hidden sibling of ``path`` that keeps its suffixes, then rename.

    Readers never see a half-written file, and a crash leaves at most a hidden temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends like the target so nibabel picks the same format from it
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_img(img: nib.Nifti1Image, path: str | Path) -> Path:
    """Save a NIfTI image atomically."""
    return atomic_path(path, lambda tmp: nib.save(img, str(tmp)))


def write_text(text: str, path: str | Path) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_path(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write bytes atomically."""
    return atomic_path(path, lambda tmp: tmp.write_bytes(data))


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table atomically: tab-separated for ``.tsv``, comma-separated otherwise."""
    sep = "\t" if str(path).endswith(".tsv") else ","
    return atomic_path(path, lambda tmp: table.to_csv(tmp, sep=sep, index=False))
