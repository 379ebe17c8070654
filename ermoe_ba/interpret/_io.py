"""Atomic writes: every output is written to a temporary file in its folder, then renamed."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pandas as pd

from ermoe_ba.atomic import atomic_path, write_text_atomic

__all__ = ["atomic_path", "save_img", "write_bytes", "write_table", "write_text"]


def save_img(img: nib.Nifti1Image, path: str | Path) -> Path:
    """Save a NIfTI image atomically."""
    return atomic_path(path, lambda tmp: nib.save(img, str(tmp)))


def write_text(text: str, path: str | Path) -> Path:
    """Write UTF-8 text atomically."""
    return write_text_atomic(text, path)


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write bytes atomically."""
    return atomic_path(path, lambda tmp: tmp.write_bytes(data))


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table atomically: tab-separated for ``.tsv``, comma-separated otherwise."""
    sep = "\t" if str(path).endswith(".tsv") else ","
    return atomic_path(path, lambda tmp: table.to_csv(tmp, sep=sep, index=False))
