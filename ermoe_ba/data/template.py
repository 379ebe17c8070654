"""The registration target: the MNI152 template and brain mask that nilearn ships (offline).

Everything here is computed once per process and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ermoe_ba.data.sitk_utils import array_to_sitk, grid_reference
from ermoe_ba.models.config import PreprocessConfig

__all__ = ["Template", "grid_core_mask", "grid_mask", "grid_template", "load_template"]

# Dilating the fixed-image metric mask by this much lets Mattes MI see the dark CSF/skull ring
# around the brain, which anchors the brain's outline (PREPROCESSING.md).
METRIC_MASK_DILATION_MM = 8.0
# Depth of the "core" mask used by the tissue-contrast QC: deep enough that a head-shaped blob
# aligned on the brain's outline cannot fake the white matter / ventricle contrast.
CORE_MARGIN_MM = 10.0


@dataclass(frozen=True)
class Template:
    """The template as SimpleITK images plus the anchor used to initialise registration.

    Attributes
    ----------
    image
        float32 template, scaled so the brain's 99th percentile is 1.
    mask
        uint8 brain mask on the template grid.
    metric_mask
        ``mask`` dilated by :data:`METRIC_MASK_DILATION_MM`, where the registration metric is sampled.
    anchor_ras
        Centroid of the brain mask (RAS mm); initial translations map it onto the scan's brain.
    top_ras
        Highest brain point (RAS z, mm).
    """

    image: sitk.Image
    mask: sitk.Image
    metric_mask: sitk.Image
    anchor_ras: tuple[float, float, float]
    top_ras: float


@functools.lru_cache(maxsize=2)
def load_template(name: str = "mni152_2009") -> Template:
    """Load the 2 mm template and brain mask shipped with nilearn (no download).

    Examples
    --------
    >>> tpl = load_template()
    >>> tpl.image.GetSize()
    (99, 117, 95)
    """
    if name != "mni152_2009":
        raise ValueError(f"template={name!r} is not available; use 'mni152_2009'")
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    tpl_img = load_mni152_template(resolution=2)
    mask_img = load_mni152_brain_mask(resolution=2)
    data = np.asarray(tpl_img.get_fdata(), dtype=np.float32)
    mask = np.asarray(mask_img.get_fdata()) > 0.5
    data = data / np.float32(np.percentile(data[mask], 99))
    image = array_to_sitk(data, tpl_img.affine)
    mask_sitk = array_to_sitk(mask.astype(np.uint8), mask_img.affine)
    radius = round(METRIC_MASK_DILATION_MM / float(image.GetSpacing()[0]))
    metric_mask = sitk.BinaryDilate(mask_sitk, [radius] * 3, sitk.sitkBall)
    ijk = np.argwhere(mask)
    world = ijk @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]
    anchor = tuple(float(v) for v in world.mean(axis=0))
    return Template(image, mask_sitk, metric_mask, anchor, float(world[:, 2].max()))


@functools.lru_cache(maxsize=8)
def _grid_arrays(
    template: str, voxel_size: float, shape: tuple[int, int, int], origin: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from scipy.ndimage import binary_erosion

    config = PreprocessConfig(template=template, voxel_size=voxel_size, grid_shape=shape, grid_origin=origin)
    reference = grid_reference(config.grid_shape, config.grid_affine())
    tpl = load_template(template)
    out = []
    for image in (sitk.Cast(tpl.mask, sitk.sitkFloat32), tpl.image):
        resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out.append(sitk.GetArrayFromImage(resampled).transpose(2, 1, 0))
    mask = np.ascontiguousarray(out[0] >= 0.5)
    intensities = np.ascontiguousarray(out[1] * mask)
    core = binary_erosion(mask, iterations=max(1, round(CORE_MARGIN_MM / voxel_size)))
    for array in (mask, intensities, core):
        array.setflags(write=False)
    return mask, intensities, core


def _grid_key(config: PreprocessConfig) -> tuple:
    return (config.template, float(config.voxel_size), tuple(config.grid_shape), tuple(config.grid_origin))


def grid_mask(config: PreprocessConfig) -> np.ndarray:
    """The template brain mask on the model grid (read-only bool array, ``config.grid_shape``, RAS)."""
    return _grid_arrays(*_grid_key(config))[0]


def grid_core_mask(config: PreprocessConfig) -> np.ndarray:
    """The brain mask eroded by :data:`CORE_MARGIN_MM`: deep tissue only, no brain outline."""
    return _grid_arrays(*_grid_key(config))[2]


def grid_template(config: PreprocessConfig) -> np.ndarray:
    """The masked template on the model grid (read-only float32, brain 99th percentile = 1)."""
    return _grid_arrays(*_grid_key(config))[1]
