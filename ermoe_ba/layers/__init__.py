"""Reusable layers: patch embedding, attention, MLP, ERMoE / softmax MoE layers, transformer block.

The package depends on torch and einops only; nothing here imports the rest of ermoe_ba.
"""

from __future__ import annotations

from ermoe_ba.layers.attention import Attention
from ermoe_ba.layers.binned_head import BinnedRegressionHead, soft_bin_kl_loss
from ermoe_ba.layers.block import Block, BlockOutput, DropPath, drop_path
from ermoe_ba.layers.conv_stem import ConvStemEmbed
from ermoe_ba.layers.dispatch import (
    DispatchFn,
    available_dispatch,
    capacity_keep_mask,
    eager_dispatch,
    get_dispatch,
    register_dispatch,
    sorted_dispatch,
)
from ermoe_ba.layers.eigen_experts import (
    ORTHOGONALIZATIONS,
    EigenExperts,
    default_expert_rank,
    orthonormal_factor,
    orthonormalize_,
    qr_retract,
)
from ermoe_ba.layers.experts import DenseExperts, ExpertBank, ExpertWeights
from ermoe_ba.layers.losses import orthogonality_penalty, router_z_loss, switch_balance_loss
from ermoe_ba.layers.mlp import Mlp
from ermoe_ba.layers.moe import ROUTERS, MoELayer
from ermoe_ba.layers.outputs import MoEOutput, RoutingInfo
from ermoe_ba.layers.patch_embed import PatchEmbed, spatial_tuple
from ermoe_ba.layers.routers import (
    EIGEN_GATES,
    EIGEN_SCORES,
    EigenbasisRouter,
    RouterOutput,
    SoftmaxTopKRouter,
    eigenbasis_scores,
    token_norms,
)
from ermoe_ba.layers.sizing import active_parameter_count, equal_active_hidden

__all__ = [
    "EIGEN_GATES",
    "EIGEN_SCORES",
    "ORTHOGONALIZATIONS",
    "ROUTERS",
    "Attention",
    "BinnedRegressionHead",
    "Block",
    "BlockOutput",
    "ConvStemEmbed",
    "DenseExperts",
    "DispatchFn",
    "DropPath",
    "EigenExperts",
    "EigenbasisRouter",
    "ExpertBank",
    "ExpertWeights",
    "Mlp",
    "MoELayer",
    "MoEOutput",
    "PatchEmbed",
    "RouterOutput",
    "RoutingInfo",
    "SoftmaxTopKRouter",
    "active_parameter_count",
    "available_dispatch",
    "capacity_keep_mask",
    "default_expert_rank",
    "drop_path",
    "eager_dispatch",
    "eigenbasis_scores",
    "equal_active_hidden",
    "get_dispatch",
    "orthogonality_penalty",
    "orthonormal_factor",
    "orthonormalize_",
    "qr_retract",
    "register_dispatch",
    "router_z_loss",
    "soft_bin_kl_loss",
    "sorted_dispatch",
    "spatial_tuple",
    "switch_balance_loss",
    "token_norms",
]
