"""A linear brain-age model on coarse voxels: the classical member of a hybrid ensemble.

``age_z = <avgpool(x), w> + b``: the conformed volume is average-pooled by ``input_pool`` (3 turns
the 2 mm grid into ~6 mm voxels) and read by one weight per pooled voxel. PCA + ridge regression
on those voxels (:class:`~ermoe_ba.training.classical.PcaRidgeBrainAge`, the classical peer of the
CV comparison) is such a linear map, so a fitted one becomes this module without loss
(:func:`~ermoe_ba.training.classical.voxel_linear_from_pca_ridge`) and can be saved, loaded and
averaged with the deep models like any registered model. The weight volume is itself a map of
where the model reads age from.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ermoe_ba.models.config import ModelConfig, routerless_image_config
from ermoe_ba.models.registry import register_model
from ermoe_ba.models.transformer import ModelOutput

__all__ = ["VoxelLinear", "pool_voxels", "pooled_shape", "voxel_ridge"]

_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def pooled_shape(img_size: tuple[int, ...], factor: int) -> tuple[int, ...]:
    """Grid after average pooling by ``factor`` (trailing voxels that do not fill a window drop).

    Examples
    --------
    >>> pooled_shape((80, 96, 80), 3)
    (26, 32, 26)
    """
    return tuple(s // factor for s in img_size)


def pool_voxels(x: torch.Tensor, factor: int, spatial_dims: int = 3) -> torch.Tensor:
    """Average-pool ``(b, c, *grid)`` by ``factor`` (in float32 at least) and flatten to ``(b, voxels)``.

    Examples
    --------
    >>> pool_voxels(torch.ones(2, 1, 6, 6, 6), 3).shape
    torch.Size([2, 8])
    """
    if factor < 1:
        raise ValueError(f"pooling factor must be >= 1, got {factor}")
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return (_POOLS[spatial_dims](x, factor) if factor > 1 else x).flatten(1)


class VoxelLinear(nn.Module):
    """Linear regression on average-pooled voxels.

    Parameters
    ----------
    config
        ``img_size``, ``spatial_dims``, ``in_chans`` (must be 1), ``num_outputs`` and
        ``input_pool`` (the pooling factor) are read from it; ``router`` is recorded as ``"dense"``.

    Attributes
    ----------
    weight
        ``(num_outputs, *pooled_shape)``: one weight per pooled voxel, zero where it reads nothing.
    bias
        ``(num_outputs,)``.
    reads_fixed_voxels
        True: each weight belongs to one place in the template, so a shifted copy of a scan is a
        different input, not the same brain seen again (shift averaging leaves this model out).

    Examples
    --------
    >>> cfg = ModelConfig(spatial_dims=2, img_size=(6, 6), input_pool=3, router="dense")
    >>> model = VoxelLinear(cfg)
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(1.0), model.bias.zero_()
    >>> model(torch.ones(2, 1, 6, 6)).output.flatten().tolist()
    [4.0, 4.0]
    """

    reads_fixed_voxels = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.input_type != "image" or config.in_chans != 1:
            raise ValueError(
                f"VoxelLinear reads single-channel images, got input_type={config.input_type!r}, "
                f"in_chans={config.in_chans}"
            )
        grid = pooled_shape(config.img_size, config.input_pool)
        if min(grid) < 1:
            raise ValueError(f"img_size={config.img_size} is smaller than one pooling window of {config.input_pool}")
        self.config = config
        self.weight = nn.Parameter(torch.empty(config.num_outputs, *grid))
        self.bias = nn.Parameter(torch.zeros(config.num_outputs))
        bound = self.weight[0].numel() ** -0.5  # nn.Linear's default range
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, capture_routing: bool = False) -> ModelOutput:
        """Linear prediction; ``capture_routing`` is accepted for the shared contract (no routing).

        Always in float32 or wider, also under autocast: a sum over ~20 000 voxels in bfloat16
        would move a prediction by a sizeable fraction of a year.
        """
        with torch.autocast(x.device.type, enabled=False):
            voxels = pool_voxels(x, self.config.input_pool, self.config.spatial_dims)
            out = voxels @ self.weight.flatten(1).t().to(voxels.dtype) + self.bias.to(voxels.dtype)
        return ModelOutput(out, out.new_zeros(()), None)


@register_model("voxel_ridge")
def voxel_ridge(**overrides: Any) -> VoxelLinear:
    """Linear model on 6 mm voxels (``input_pool=3`` of the 2 mm grid), weights from PCA + ridge."""
    config, preprocess = routerless_image_config(overrides, {"input_pool": 3})
    model = VoxelLinear(config)
    model.default_preprocess = preprocess
    return model
