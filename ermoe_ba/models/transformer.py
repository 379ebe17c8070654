"""The shared transformer trunk behind every variant (3D brain age, 2D ViT, token sequences).

One method vocabulary on every model: ``forward_features`` -> ``pool`` -> ``forward_head``,
and ``forward`` that chains them. Which blocks get a mixture-of-experts feed-forward layer,
and with which router, comes from :class:`~ermoe_ba.models.config.ModelConfig`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ermoe_ba.layers import Block, ConvStemEmbed, Mlp, MoELayer, PatchEmbed, equal_active_hidden, spatial_tuple
from ermoe_ba.models.config import ModelConfig
from ermoe_ba.models.heads import build_head
from ermoe_ba.routing.trace import LayerTrace, RoutingTrace

__all__ = ["MoETransformer", "ModelOutput", "TrunkOutput"]


class TrunkOutput(NamedTuple):
    """Output of :meth:`MoETransformer.forward_features`: ``tokens`` is ``(b, n(+1), d)``."""

    tokens: torch.Tensor
    aux_loss: torch.Tensor
    routing: RoutingTrace | None


class ModelOutput(NamedTuple):
    """Output of a model's ``forward``: ``output`` is ``(b, num_outputs)``."""

    output: torch.Tensor
    aux_loss: torch.Tensor
    routing: RoutingTrace | None


def moe_layer_factory(config: ModelConfig):
    """A ``Block(mlp_layer=...)`` factory ``(in_features, hidden_features, act_layer, drop) -> MoELayer``.

    The expert width is ``config.expert_hidden`` or, when None, the width that gives the MoE
    layer the same active parameters per token as the dense ``Mlp`` it replaces.
    """
    router = "softmax" if config.router.startswith("softmax") else "ermoe"
    balance = config.balance_loss_weight if config.router == "softmax+lbl" else 0.0

    def build(
        in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0
    ) -> MoELayer:
        hidden = config.expert_hidden or equal_active_hidden(
            in_features, hidden_features, config.num_experts, config.top_k, router, config.expert_rank
        )
        return MoELayer(
            in_features=in_features,
            hidden_features=hidden,
            num_experts=config.num_experts,
            top_k=config.top_k,
            router=router,
            expert_rank=config.expert_rank,
            balance_loss_weight=balance,
            z_loss_weight=config.z_loss_weight,
            route_threshold=config.route_threshold,
            dispatch=config.dispatch,
            act_layer=act_layer,
            score=config.score,
            disjoint_bases=config.disjoint_bases and router == "ermoe",
            drop=drop,
        )

    return build


class MoETransformer(nn.Module):
    """Pre-norm transformer over image patches (2D/3D) or token ids, with MoE blocks.

    Parameters
    ----------
    config
        Architecture; see :class:`~ermoe_ba.models.config.ModelConfig`.

    Examples
    --------
    >>> cfg = ModelConfig(spatial_dims=2, img_size=(32, 32), patch_size=8, embed_dim=32,
    ...                   depth=2, num_heads=2, num_outputs=10)
    >>> MoETransformer(cfg)(torch.randn(2, 1, 32, 32)).output.shape
    torch.Size([2, 10])
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        if config.input_type == "image":
            img_size, patch_size = _pooled_geometry(config)
            pool = (nn.AvgPool3d if config.spatial_dims == 3 else nn.AvgPool2d)(config.input_pool)
            self.input_pool: nn.Module = pool if config.input_pool > 1 else nn.Identity()
            if config.stem in ("conv", "conv_pool"):
                self.patch_embed: nn.Module = ConvStemEmbed(
                    img_size,
                    patch_size,
                    config.in_chans,
                    dim,
                    config.spatial_dims,
                    config.stem_width,
                    downsample="maxpool" if config.stem == "conv_pool" else "stride",
                )
            else:
                self.patch_embed = PatchEmbed(
                    img_size, patch_size, config.in_chans, dim, spatial_dims=config.spatial_dims
                )
            self.grid_size: tuple[int, ...] | None = tuple(self.patch_embed.grid_size)
            num_tokens = self.patch_embed.num_patches
        else:
            self.input_pool = nn.Identity()
            self.patch_embed = nn.Embedding(config.vocab_size, dim)
            self.grid_size = None
            num_tokens = config.max_seq_len
        self.num_prefix_tokens = 1 if config.pool == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.num_prefix_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + self.num_prefix_tokens, dim))
        self.pos_drop = nn.Dropout(config.drop_rate)
        drop_path = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        moe = moe_layer_factory(config) if config.uses_moe else None
        self.moe_block_indices = [i for i in range(config.depth) if moe and (i + 1) % config.moe_every == 0]
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.num_heads,
                mlp_ratio=config.mlp_ratio,
                qkv_bias=config.qkv_bias,
                proj_drop=config.drop_rate,
                drop_path=drop_path[i],
                causal=config.causal,
                mlp_layer=moe if i in self.moe_block_indices else Mlp,
            )
            for i in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(config.head_dropout)
        head_width = dim * num_tokens if config.pool == "flatten" else dim
        self.head = build_head(config, head_width)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def forward_features(self, x: torch.Tensor, capture_routing: bool = False) -> TrunkOutput:
        """Embed ``x`` and run the blocks; collect auxiliary losses and, if asked, the routing."""
        tokens = self.patch_embed(self.input_pool(x))  # (b, n, d)
        batch = tokens.shape[0]
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = self.pos_drop(tokens + self.pos_embed[:, : tokens.shape[1]])
        aux_loss = tokens.new_zeros(())
        trace = RoutingTrace(grid_size=self.grid_size) if capture_routing else None
        for index, block in enumerate(self.blocks):
            out = block(tokens, capture_routing=capture_routing)
            tokens, aux_loss = out.output, aux_loss + out.aux_loss
            if trace is not None and out.routing is not None:
                trace.layers[index] = LayerTrace.from_info(index, out.routing, batch, self.num_prefix_tokens)
        return TrunkOutput(self.norm(tokens), aux_loss, trace)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(b, n, d) -> (b, d)``: the CLS token or the mean of the patch tokens (``(b, n·d)`` for ``"flatten"``)."""
        if self.config.pool == "cls":
            return tokens[:, 0]
        patches = tokens[:, self.num_prefix_tokens :]
        return patches.flatten(1) if self.config.pool == "flatten" else patches.mean(dim=1)

    def forward_head(self, pooled: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Apply the head to pooled features; ``pre_logits=True`` returns the features."""
        pooled = self.head_drop(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor, capture_routing: bool = False) -> ModelOutput:
        """Full forward pass. Routing is only collected when ``capture_routing`` is True."""
        features = self.forward_features(x, capture_routing=capture_routing)
        output = self.forward_head(self.pool(features.tokens))
        return ModelOutput(output, features.aux_loss, features.routing)


def _pooled_geometry(config: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Image and patch size after ``input_pool``; both must divide by it exactly."""
    img = spatial_tuple("img_size", config.img_size, config.spatial_dims)
    patch = spatial_tuple("patch_size", config.patch_size, config.spatial_dims)
    pool = config.input_pool
    if any(v % pool for v in (*img, *patch)):
        raise ValueError(
            f"input_pool={pool} must divide img_size={img} and patch_size={patch}; "
            "pick a pool factor that divides both (or 1)"
        )
    return tuple(v // pool for v in img), tuple(v // pool for v in patch)


def build_trunk(defaults: dict, overrides: dict) -> MoETransformer:
    """Build a :class:`MoETransformer` from registered ``defaults`` updated by user ``overrides``."""
    return MoETransformer(ModelConfig.from_dict({**defaults, **overrides}))
