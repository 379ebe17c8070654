"""3D brain-age regressors: the shared trunk over a T1 volume in the model grid -> one age.

Sizes: ``ermoe_ba_tiny`` trains in minutes on a laptop CPU and is the bundled default;
``ermoe_ba_small`` and ``ermoe_ba_base`` are presets for CUDA servers. Every variant carries
``default_preprocess``: the model grid its input must be conformed to.
"""

from __future__ import annotations

from typing import Any

from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.models.registry import register_model
from ermoe_ba.models.transformer import MoETransformer, build_trunk

__all__ = ["brain_age_model", "ermoe_ba_base", "ermoe_ba_small", "ermoe_ba_tiny"]


def brain_age_model(defaults: dict[str, Any], overrides: dict[str, Any]) -> MoETransformer:
    """A 3D regression trunk whose image size is the default model grid.

    ``overrides`` may contain ``preprocess`` (a :class:`PreprocessConfig` or its dict) to train
    on another grid; ``img_size`` then follows the grid shape.
    """
    overrides = dict(overrides)
    preprocess = overrides.pop("preprocess", None) or PreprocessConfig()
    if isinstance(preprocess, dict):
        preprocess = PreprocessConfig.from_dict(preprocess)
    base = {"input_type": "image", "spatial_dims": 3, "in_chans": 1, "num_outputs": 1}
    base["img_size"] = tuple(preprocess.grid_shape)
    model = build_trunk({**base, **defaults}, overrides)
    model.default_preprocess = preprocess
    return model


@register_model("ermoe_ba_tiny")
def ermoe_ba_tiny(**overrides: Any) -> MoETransformer:
    """CPU default: 2 mm input pooled to 4 mm, conv stem to 16-voxel (32 mm) patches -> 150 tokens,
    width 96, 4 blocks, 8 experts, top-2.

    The convolutional stem replaced the linear patch projection after one CV fold on the IXI
    development set (fold 0, same recipe): ERMoE test MAE 10.4 y (linear) -> 7.9 y (conv).
    Pooling the input to 4 mm makes a training step ~5x cheaper (55 -> 10 ms per scan on one
    core), which pays for seed ensembles; set ``input_pool=1`` for the full-resolution stem.
    """
    defaults = dict(
        patch_size=16,
        stem="conv",
        input_pool=2,
        embed_dim=96,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        num_experts=8,
        top_k=2,
    )
    return brain_age_model(defaults, overrides)


@register_model("ermoe_ba_small")
def ermoe_ba_small(**overrides: Any) -> MoETransformer:
    """GPU preset: conv stem to 8-voxel (16 mm) patches -> 1200 tokens, width 192, 8 blocks, 8 experts, top-2."""
    defaults = dict(
        patch_size=8, stem="conv", embed_dim=192, depth=8, num_heads=6, mlp_ratio=4.0, num_experts=8, top_k=2
    )
    return brain_age_model(defaults, overrides)


@register_model("ermoe_ba_base")
def ermoe_ba_base(**overrides: Any) -> MoETransformer:
    """GPU preset: conv stem to 8-voxel patches, width 384, 12 blocks, 16 experts, top-2."""
    defaults = dict(
        patch_size=8, stem="conv", embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, num_experts=16, top_k=2
    )
    return brain_age_model(defaults, overrides)
