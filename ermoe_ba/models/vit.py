"""2D image classifiers and token-sequence encoders on the same trunk.

These small entries keep the trunk honest about being dimension-agnostic; full-size ViT and
retrieval presets will be registered next to them.
"""

from __future__ import annotations

from typing import Any

from ermoe_ba.models.registry import register_model
from ermoe_ba.models.transformer import MoETransformer, build_trunk

__all__ = ["text_ermoe_tiny", "vit_ermoe_tiny"]


@register_model("vit_ermoe_tiny")
def vit_ermoe_tiny(**overrides: Any) -> MoETransformer:
    """2D ViT classifier: 224x224 RGB, 16-pixel patches, width 192, 12 blocks, 8 experts, 1000 classes."""
    defaults = dict(
        input_type="image",
        spatial_dims=2,
        in_chans=3,
        img_size=(224, 224),
        patch_size=16,
        embed_dim=192,
        depth=12,
        num_heads=3,
        num_experts=8,
        top_k=2,
        pool="cls",
        num_outputs=1000,
    )
    return build_trunk(defaults, overrides)


@register_model("text_ermoe_tiny")
def text_ermoe_tiny(**overrides: Any) -> MoETransformer:
    """Token-sequence encoder (causal text tower): vocabulary 49408, 77 tokens, width 256, no head."""
    defaults = dict(
        input_type="tokens",
        vocab_size=49408,
        max_seq_len=77,
        causal=True,
        embed_dim=256,
        depth=6,
        num_heads=4,
        num_experts=8,
        top_k=2,
        pool="mean",
        num_outputs=0,
    )
    return build_trunk(defaults, overrides)
