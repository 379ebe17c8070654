"""Bring model-grid maps back into a scan's own (native) space.

Preprocessing registers each scan to the template and keeps ``transform``: the 4x4 matrix that
maps template (model grid) world RAS mm points to the scan's native world RAS mm points. A map
with model-grid affine ``A_g`` therefore lies in native world space with affine
``transform @ A_g``; resampling that image onto the scan's own voxel grid with nearest
neighbour gives, for native voxel ``v``, the model voxel nearest to
``inv(A_g) @ inv(transform) @ A_n @ v``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["NativeGrid", "check_transform", "native_grid", "to_native"]


def check_transform(transform: np.ndarray | list[list[float]] | None) -> np.ndarray:
    """Validate a 4x4 homogeneous world-to-world transform and return it as float64.

    Examples
    --------
    >>> check_transform(np.eye(4)).shape
    (4, 4)
    """
    if transform is None:
        raise ValueError("no registration transform (the scan was not conformed or registration was off)")
    matrix = np.asarray(transform, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(
            f"transform must be a 4x4 matrix (template world -> native world), got {matrix.shape}"
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError("transform has non-finite entries; the registration of this scan failed")
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"transform's last row must be [0, 0, 0, 1], got {matrix[3].tolist()}")
    det = float(np.linalg.det(matrix[:3, :3]))
    if abs(det) < 1e-6:
        raise ValueError(f"transform is singular (determinant {det:.3g}); cannot map back to the scan")
    return matrix


NativeGrid = tuple[tuple[int, int, int], np.ndarray]
"""A scan's voxel grid: 3D shape and 4x4 voxel-to-world affine."""


def native_grid(native_img: nib.spatialimages.SpatialImage | str | Path | NativeGrid) -> NativeGrid:
    """3D shape and affine of a scan given as an image, a path (NIfTI, MGZ, DICOM folder) or both."""
    if isinstance(native_img, tuple):
        shape, affine = native_img
        return tuple(int(s) for s in shape[:3]), np.asarray(affine, dtype=np.float64)
    if isinstance(native_img, nib.spatialimages.SpatialImage):
        return tuple(int(s) for s in native_img.shape[:3]), np.asarray(native_img.affine, dtype=np.float64)
    from ermoe_ba.data.native import native_geometry  # NIfTI, MGZ or a DICOM series folder

    path = Path(native_img)
    if not path.exists():
        raise FileNotFoundError(f"native scan {path} does not exist; cannot map expert maps back to it")
    return native_geometry(path)


def to_native(
    img: nib.Nifti1Image,
    transform: Any,
    native_img: nib.spatialimages.SpatialImage | str | Path | NativeGrid,
) -> nib.Nifti1Image:
    """Resample a model-grid map onto a scan's voxel grid with nearest neighbour.

    Parameters
    ----------
    img
        3D or 4D map in the model grid (MNI space), e.g. from :func:`expert_label_img`.
    transform
        4x4 template-world -> native-world matrix, or an object carrying it as ``.transform``
        (:class:`~ermoe_ba.data.conform.ConformResult`).
    native_img
        The scan: a loaded image, its path (NIfTI, MGZ or DICOM series folder) or its
        ``(shape, affine)``; only its voxel grid is used.

    Returns
    -------
    nibabel.Nifti1Image
        Same dtype as ``img``, on the scan's grid; voxels that fall outside the model grid are 0.

    Examples
    --------
    >>> grid = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4))
    >>> shifted = np.eye(4); shifted[0, 3] = 1.0  # native x = template x + 1 mm
    >>> scan = nib.Nifti1Image(np.zeros((3, 2, 2), np.float32), np.eye(4))
    >>> to_native(grid, shifted, scan).get_fdata()[:, 0, 0].tolist()
    [0.0, 0.0, 4.0]
    """
    from nilearn.image import resample_img

    matrix = check_transform(getattr(transform, "transform", transform))
    native_shape, native_affine = native_grid(native_img)
    data = np.asanyarray(img.dataobj)
    in_native_world = nib.Nifti1Image(data, matrix @ img.affine)
    out = resample_img(
        in_native_world,
        target_affine=native_affine,
        target_shape=native_shape,
        interpolation="nearest",
        fill_value=0,
        force_resample=True,
        copy_header=True,
    )
    result = nib.Nifti1Image(np.asarray(out.dataobj).astype(data.dtype, copy=False), native_affine)
    result.header.set_xyzt_units("mm")
    return result
