"""Model configs, the registry and the registered variants (torch only)."""

from __future__ import annotations

from ermoe_ba.models import brain_age, sfcn, vit, voxel_linear  # noqa: F401  (registers the variants)
from ermoe_ba.models.config import ROUTERS, ModelConfig, PreprocessConfig
from ermoe_ba.models.ensemble import ModelEnsemble
from ermoe_ba.models.registry import create_model, is_model, list_models, register_model
from ermoe_ba.models.transformer import ModelOutput, MoETransformer, TrunkOutput

__all__ = [
    "ROUTERS",
    "MoETransformer",
    "ModelConfig",
    "ModelEnsemble",
    "ModelOutput",
    "PreprocessConfig",
    "TrunkOutput",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
]
