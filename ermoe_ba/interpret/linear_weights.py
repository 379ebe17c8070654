"""Where the linear member of a hybrid ensemble reads age: its weights as a brain map.

A :class:`~ermoe_ba.models.voxel_linear.VoxelLinear` member predicts
``age = mean + std · (<avgpool(x), w> + b)``. Spreading each pooled weight evenly over the model
voxels it averages gives a map ``m`` on the model grid with ``age = Σ_v m_v x_v + intercept``:
years of predicted age per unit of normalised intensity at each 2 mm voxel. Positive voxels push
the prediction up as they brighten. A linear model's weights mix signal with suppression of
correlated noise (Haufe et al. 2014), so read the map as what the model uses, not as where age
shows.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from torch import nn

from ermoe_ba.interpret.tokens import grid_image
from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.models.voxel_linear import VoxelLinear

__all__ = ["age_weight_img", "linear_members"]


def linear_members(model: nn.Module) -> list[VoxelLinear]:
    """The :class:`VoxelLinear` modules inside ``model`` (an ensemble's linear members, or itself)."""
    return [m for m in model.modules() if isinstance(m, VoxelLinear)]


def age_weight_img(member: VoxelLinear, config: PreprocessConfig, target_std: float) -> nib.Nifti1Image:
    """The member's weights in years per unit intensity per model voxel, as a float32 MNI-space map.

    Examples
    --------
    >>> img = age_weight_img(linear_members(model)[0], predictor.preprocess, predictor.target_std)  # doctest: +SKIP
    """
    factor = member.config.input_pool
    weight = member.weight.detach().cpu().double().numpy()[0] * target_std / factor**3
    for axis in range(weight.ndim):
        weight = np.repeat(weight, factor, axis=axis)
    full = np.zeros(tuple(config.grid_shape), dtype=np.float32)
    full[tuple(slice(0, s) for s in weight.shape)] = weight
    return grid_image(full, config)
