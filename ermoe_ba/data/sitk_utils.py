"""Conversions between (array, RAS affine) pairs and SimpleITK images and transforms.

nibabel and MONAI describe images by a voxel-to-world affine in RAS mm; ITK uses LPS physical
points with an origin, spacing and direction. ``_FLIP`` = diag(-1, -1, 1) converts one to the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk

__all__ = [
    "affine_to_ras_matrix",
    "antialiased",
    "array_to_sitk",
    "grid_reference",
    "itk_threads",
    "ras_matrix_to_affine_transform",
    "sitk_to_array",
]

_FLIP = np.diag([-1.0, -1.0, 1.0])


def array_to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image whose index ``(i, j, k)`` is ``data[i, j, k]`` placed by the RAS ``affine``."""
    affine = np.asarray(affine, dtype=np.float64)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = _FLIP @ (linear / spacing)
    # ITK needs orthonormal direction cosines; a header with a tiny shear is snapped to the
    # nearest rotation (polar decomposition). Real shear would already fail validation upstream.
    u, _, vt = np.linalg.svd(direction)
    direction = u @ vt
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in direction.ravel()])
    image.SetOrigin([float(o) for o in _FLIP @ affine[:3, 3]])
    return image


def antialiased(image: sitk.Image, grid_spacing: float) -> sitk.Image:
    """``image`` blurred along each axis finer than ``grid_spacing`` mm, ready to be resampled onto it.

    A voxel of spacing ``s`` read by linear interpolation blurs like a kernel of variance ``s² / 4``
    (box ``s² / 12`` plus tent ``s² / 6``). A discrete Gaussian of variance ``(g² − s²) / 4`` along
    each axis finer than the grid spacing ``g`` brings every scan to the blur of one stored at
    ``g``, so the model sees the same sharpness whatever resolution a scan was acquired or stored
    at. Axes at or coarser than ``g`` get no blur; an image needing none is returned as is.

    Examples
    --------
    >>> image = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    >>> image.SetSpacing([1.0, 1.0, 3.0])
    >>> antialiased(image, 2.0).GetSpacing()
    (1.0, 1.0, 3.0)
    """
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    variance = np.clip(grid_spacing**2 - spacing**2, 0.0, None) / 4.0
    if not (variance > (0.01 * grid_spacing) ** 2).any():
        return image
    smoother = sitk.DiscreteGaussianImageFilter()
    smoother.SetUseImageSpacing(True)
    smoother.SetVariance([float(v) for v in variance])  # variance 0 leaves an axis as it is
    smoother.SetMaximumError(1e-4)  # a looser truncation visibly shrinks sub-voxel variances
    smoother.SetMaximumKernelWidth(64)
    return smoother.Execute(image)


@contextmanager
def itk_threads(count: int) -> Iterator[None]:
    """Run the SimpleITK calls inside the block with ``count`` threads (the global default).

    The default is process-wide, so Python threads conforming at the same time in one process
    would change it under each other; the package parallelises conforming with processes only.

    Examples
    --------
    >>> with itk_threads(1):
    ...     sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    1
    """
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def sitk_to_array(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`array_to_sitk`: a ``(X, Y, Z[, C])`` array and its RAS affine."""
    data = sitk.GetArrayFromImage(image)
    dim = image.GetDimension()
    data = data.transpose(tuple(range(dim - 1, -1, -1)) + tuple(range(dim, data.ndim)))
    if dim != 3:
        raise ValueError(f"expected a 3D image, got {dim}D (size {image.GetSize()})")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _FLIP @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _FLIP @ np.asarray(image.GetOrigin())
    return data, affine


def grid_reference(shape: tuple[int, int, int], affine: np.ndarray | list) -> sitk.Image:
    """An empty float32 SimpleITK image with the geometry of a RAS grid, as a resampling target."""
    affine = np.asarray(affine, dtype=np.float64)
    image = sitk.Image([int(s) for s in shape], sitk.sitkFloat32)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (_FLIP @ (affine[:3, :3] / spacing)).ravel()])
    image.SetOrigin([float(o) for o in _FLIP @ affine[:3, 3]])
    return image


def affine_to_ras_matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 RAS matrix of a linear ITK transform (fixed LPS point → moving LPS point).

    The result maps fixed-space RAS mm to moving-space RAS mm. Only linear transforms (affine,
    similarity, Euler, translation and composites of them) are supported.
    """
    dim = 3
    # Probe the transform at the origin and the unit vectors: exact for any linear map.
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    columns = [np.asarray(transform.TransformPoint(tuple(np.eye(dim)[i]))) - origin for i in range(dim)]
    lps = np.eye(4)
    lps[:3, :3] = np.stack(columns, axis=1)
    lps[:3, 3] = origin
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def ras_matrix_to_affine_transform(matrix: np.ndarray) -> sitk.AffineTransform:
    """Inverse of :func:`affine_to_ras_matrix` for a 4x4 RAS matrix."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ np.asarray(matrix, dtype=np.float64) @ flip
    transform = sitk.AffineTransform(3)
    transform.SetMatrix([float(v) for v in lps[:3, :3].ravel()])
    transform.SetTranslation([float(v) for v in lps[:3, 3]])
    return transform
