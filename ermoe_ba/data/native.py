"""Bring a map on the model grid back to a scan's own voxel grid (native space)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["NativeGrid", "native_geometry", "to_native"]

NativeGrid = tuple[tuple[int, int, int], np.ndarray]
"""A scan's voxel grid: 3D shape and 4x4 voxel-to-world (RAS mm) affine."""


def native_geometry(scan: Any) -> NativeGrid:
    """3D shape and affine of a scan: a NIfTI/MGZ path, a DICOM series folder, a nibabel image
    or an already known ``(shape, affine)`` pair."""
    if isinstance(scan, tuple):
        shape, affine = scan
        return tuple(int(s) for s in shape[:3]), np.asarray(affine, dtype=np.float64)
    if hasattr(scan, "affine") and hasattr(scan, "shape"):
        return tuple(int(s) for s in scan.shape[:3]), np.asarray(scan.affine, dtype=np.float64)
    path = Path(scan)
    if not path.exists():
        raise FileNotFoundError(f"native scan {path} does not exist; cannot map back to it")
    if path.is_dir():
        import SimpleITK as sitk

        from ermoe_ba.data.sitk_utils import sitk_to_array

        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        files = max((reader.GetGDCMSeriesFileNames(str(path), s) for s in series), key=len)
        reader.SetFileNames(files)
        data, affine = sitk_to_array(reader.Execute())
        return tuple(int(s) for s in data.shape[:3]), affine
    import nibabel as nib

    image = nib.load(str(path))
    return tuple(int(s) for s in image.shape[:3]), np.asarray(image.affine, dtype=np.float64)


def to_native(
    volume_in_model_grid: np.ndarray,
    result_or_transform: Any,
    native_image_path: Any,
    order: int = 0,
    grid_affine: np.ndarray | None = None,
):
    """Resample a model-grid map into the voxel grid of the scan it was conformed from.

    Parameters
    ----------
    volume_in_model_grid
        Array of the model grid's shape (e.g. an expert map or a label image); a 4D array is
        resampled volume by volume along its last axis.
    result_or_transform
        A :class:`~ermoe_ba.data.conform.ConformResult` (its ``transform`` and ``affine`` are
        used) or the 4x4 template-world → scan-world RAS matrix.
    native_image_path
        The scan as given to conform (path or DICOM folder), a nibabel image, or its
        ``(shape, affine)``.
    order
        Spline order: 0 (nearest neighbour) for labels and masks, 1 for continuous maps.
    grid_affine
        Model grid affine when a bare matrix is given; defaults to ``PreprocessConfig()``'s.

    Returns
    -------
    nibabel.Nifti1Image
        The map on the scan's own grid and affine; zero outside the model grid.

    Examples
    --------
    >>> img = to_native(result.volume > 0, result, "sub-01_T1w.nii.gz")  # doctest: +SKIP
    """
    import nibabel as nib
    from scipy.ndimage import affine_transform

    matrix = getattr(result_or_transform, "transform", result_or_transform)
    if matrix is None:
        raise ValueError(f"{native_image_path}: no transform (the scan was not conformed)")
    if grid_affine is None:
        grid_affine = getattr(result_or_transform, "affine", None)
    if grid_affine is None:
        from ermoe_ba.models.config import PreprocessConfig

        grid_affine = PreprocessConfig().grid_affine()
    shape, native_affine = native_geometry(native_image_path)
    # native voxel → native world → template world → model-grid voxel
    voxel_map = np.linalg.inv(np.asarray(grid_affine)) @ np.linalg.inv(np.asarray(matrix)) @ native_affine
    source = np.asarray(volume_in_model_grid)
    work_dtype = np.float32 if order else (np.uint8 if source.dtype == np.bool_ else source.dtype)
    volumes = source[..., None] if source.ndim == 3 else source
    out = np.stack(
        [
            affine_transform(
                volumes[..., i].astype(work_dtype, copy=False),
                voxel_map,
                output_shape=shape,
                order=order,
                mode="constant",
                cval=0.0,
            )
            for i in range(volumes.shape[-1])
        ],
        axis=-1,
    )
    out = out[..., 0] if source.ndim == 3 else out
    return nib.Nifti1Image(out.astype(work_dtype, copy=False), native_affine)
