"""Load one T1 scan (NIfTI, MGZ or a DICOM series folder), validate it and reorient it to RAS.

Every problem becomes a :class:`ScanError` whose message is one line naming the file and the
problem, so that a batch can record it and go on.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ermoe_ba.errors import exception_summary

log = logging.getLogger(__name__)

__all__ = [
    "FOV_RANGE_MM",
    "MAX_NOT_FINITE_FRACTION",
    "SPACING_RANGE_MM",
    "LoadedScan",
    "ScanError",
    "is_dicom_dir",
    "load_scan",
    "reorient_ras",
    "validate_array",
    "warn_not_finite",
]

SPACING_RANGE_MM = (0.2, 8.0)
MAX_NOT_FINITE_FRACTION = 0.5  # more NaN/inf voxels than this: not a usable scan
FOV_RANGE_MM = (80.0, 600.0)


class ScanError(ValueError):
    """A scan that cannot be conformed; the message is ``"<file>: <problem>"`` on one line."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")


@dataclass
class LoadedScan:
    """A validated scan in RAS voxel order.

    Attributes
    ----------
    data
        float32 array (X, Y, Z), voxel axes pointing (as near as possible) R, A, S.
    affine
        4x4 voxel-to-world (RAS mm) affine of ``data``.
    native_affine, native_shape
        Affine and 3D shape of the scan as stored, for mapping results back.
    not_finite_voxels
        NaN or infinite voxels of the stored scan, read as 0 (background).
    """

    data: np.ndarray
    affine: np.ndarray
    native_affine: np.ndarray
    native_shape: tuple[int, int, int]
    not_finite_voxels: int = 0


def warn_not_finite(path: str | Path, count: int) -> None:
    """Log that ``count`` NaN/inf voxels of ``path`` were read as background (nothing when 0)."""
    if count:
        log.warning("%s: %d NaN or infinite voxels read as 0 (background)", path, count)


def is_dicom_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM series that SimpleITK can read."""
    path = Path(path)
    if not path.is_dir():
        return False
    import SimpleITK as sitk

    # ITK prints "No Series were found" for every ordinary folder it probes; that is no news.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib
    from monai.data import NibabelReader
    from monai.transforms import LoadImage

    loader = LoadImage(reader=NibabelReader(), image_only=True, dtype=np.float32)
    try:
        img = loader(str(path))
    except Exception:
        # MONAI reports any failure as "no suitable reader" and tells the user to install reader
        # libraries; nibabel's header read names what is wrong with the file
        nib.load(str(path))
        raise
    return np.asarray(img.numpy()), np.asarray(img.affine, dtype=np.float64)


def _read_dicom(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise ValueError("folder holds no DICOM series")
    # Several series in one folder: take the one with the most slices (the volume, not a scout).
    files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), s) for s in series), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    from ermoe_ba.data.sitk_utils import sitk_to_array

    return sitk_to_array(image)


def validate_array(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check shape, values and geometry; return a float32 3D array and its affine.

    NaN or infinite voxels are read as 0 (background: tools that resample or mask images write NaN
    outside the brain or field of view) unless they are more than ``MAX_NOT_FINITE_FRACTION`` of
    the volume.

    Raises
    ------
    ValueError
        With a one-line description of the problem (the caller adds the file name).
    """
    if data.ndim > 3:
        extra = data.shape[3:]
        if int(np.prod(extra)) != 1:
            raise ValueError(
                f"4D image with {int(np.prod(extra))} volumes (shape {data.shape}); "
                "expected one 3D T1 volume: split the series and pass one volume"
            )
        data = data.reshape(data.shape[:3])
    if data.ndim < 3 or 1 in data.shape:
        raise ValueError(f"2D image (shape {data.shape}); expected a 3D volume with >= 8 voxels per axis")
    if min(data.shape) < 8:
        raise ValueError(f"volume too small (shape {data.shape}); expected >= 8 voxels per axis")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(f"data type {data.dtype} is not a real-valued image")
    data = np.asarray(data, dtype=np.float32)
    not_finite = ~np.isfinite(data)
    if not_finite.any():
        if not_finite.mean() > MAX_NOT_FINITE_FRACTION:
            raise ValueError(f"{int(not_finite.sum())} of {data.size} voxels are NaN or infinite")
        data = np.where(not_finite, np.float32(0), data)  # background, as SPM- or FSL-written images mean it
    if float(data.max()) == float(data.min()):
        what = "all zero" if float(data.max()) == 0.0 else f"constant ({float(data.max()):g})"
        raise ValueError(f"image is {what}; expected a T1 scan")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise ValueError("voxel-to-world affine is missing or singular; fix the header (sform/qform)")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lo, hi = SPACING_RANGE_MM
    if np.any(spacing < lo) or np.any(spacing > hi):
        raise ValueError(
            f"implausible voxel size {tuple(round(float(s), 3) for s in spacing)} mm; "
            f"expected {lo}-{hi} mm per axis: check the header's units and pixdim"
        )
    fov = spacing * np.asarray(data.shape)
    lo, hi = FOV_RANGE_MM
    if np.any(fov < lo) or np.any(fov > hi):
        raise ValueError(
            f"implausible field of view {tuple(round(float(f)) for f in fov)} mm; "
            f"expected {lo:g}-{hi:g} mm per axis for a whole-brain T1 scan"
        )
    return data, affine


def load_scan(path: str | Path) -> LoadedScan:
    """Read, validate and reorient a scan to RAS voxel order.

    Parameters
    ----------
    path
        A ``.nii``, ``.nii.gz`` or ``.mgz`` file, or a folder holding a DICOM series.

    Raises
    ------
    ScanError
        One line ``"<path>: <problem>"`` for unreadable, truncated or implausible input.

    Examples
    --------
    >>> scan = load_scan("sub-01_T1w.nii.gz")  # doctest: +SKIP
    >>> scan.data.shape, nib.aff2axcodes(scan.affine)  # doctest: +SKIP
    ((90, 120, 120), ('R', 'A', 'S'))
    """
    path = Path(path)
    if not path.exists():
        raise ScanError(path, "file does not exist")
    try:
        if path.is_dir():
            data, affine = _read_dicom(path)
        else:
            if path.stat().st_size == 0:
                raise ValueError("file is empty")
            with warnings.catch_warnings():
                # nibabel warns about odd headers; the checks below judge the result instead.
                warnings.simplefilter("ignore")
                data, affine = _read_nifti(path)
    except ScanError:
        raise
    except Exception as err:  # any reader failure: the batch must go on with a one-line reason
        kind = "DICOM series" if path.is_dir() else "image"
        raise ScanError(path, f"unreadable or truncated {kind} ({exception_summary(err)})") from None
    floating = np.issubdtype(data.dtype, np.floating)
    not_finite_count = int(np.count_nonzero(~np.isfinite(data))) if floating else 0
    try:
        data, affine = validate_array(data, affine)
    except ValueError as err:
        raise ScanError(path, str(err)) from None
    warn_not_finite(path, not_finite_count)
    native_shape = tuple(int(s) for s in data.shape)
    ras, ras_affine = reorient_ras(data, affine)
    return LoadedScan(
        data=ras, affine=ras_affine, native_affine=affine, native_shape=native_shape, not_finite_voxels=not_finite_count
    )


def reorient_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute voxel axes so they point R, A, S (MONAI ``Orientation``); world unchanged."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(data))[None], affine=torch.from_numpy(affine))
    out = Orientation(axcodes="RAS", labels=None)(img)
    return np.ascontiguousarray(out[0].numpy()), np.asarray(out.affine, dtype=np.float64)
