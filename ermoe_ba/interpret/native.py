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

from ermoe_ba.data.native import NativeGrid, native_geometry
from ermoe_ba.data.native import to_native as native_to_grid

__all__ = ["NativeGrid", "check_transform", "native_grid", "to_native"]

native_grid = native_geometry  # a scan's (shape, affine), read once for many maps


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
        raise ValueError(f"transform must be a 4x4 matrix (template world -> native world), got {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("transform has non-finite entries; the registration of this scan failed")
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"transform's last row must be [0, 0, 0, 1], got {matrix[3].tolist()}")
    det = float(np.linalg.det(matrix[:3, :3]))
    if abs(det) < 1e-6:
        raise ValueError(f"transform is singular (determinant {det:.3g}); cannot map back to the scan")
    return matrix


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
    matrix = check_transform(getattr(transform, "transform", transform))
    data = np.asanyarray(img.dataobj)
    out = native_to_grid(data, matrix, native_img, order=0, grid_affine=img.affine)
    result = nib.Nifti1Image(np.asarray(out.dataobj).astype(data.dtype, copy=False), out.affine)
    result.header.set_xyzt_units("mm")
    return result
