"""Pre-norm transformer block with an injectable feed-forward layer (dense MLP or MoE)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ermoe_ba.layers.attention import Attention
from ermoe_ba.layers.mlp import Mlp
from ermoe_ba.layers.moe import MoELayer
from ermoe_ba.layers.outputs import RoutingInfo

__all__ = ["Block", "BlockOutput", "DropPath", "drop_path"]


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``drop_prob``.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1), got {drop_prob}.")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class BlockOutput(NamedTuple):
    """Output of :class:`Block`: tokens, auxiliary loss (0-tensor for a dense MLP), routing or None."""

    output: torch.Tensor
    aux_loss: torch.Tensor
    routing: RoutingInfo | None


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``, each branch with stochastic depth.

    An MoE feed-forward layer with ``score="context"`` also receives ``attn(norm1(x))`` (the
    attention-weighted context of each token, before stochastic depth) as ``context``.

    ``mlp_layer`` is called as ``mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio),
    act_layer=act_layer, drop=proj_drop)``; pass ``functools.partial(MoELayer, num_experts=...)``
    for a mixture-of-experts block.

    Parameters
    ----------
    dim, num_heads, mlp_ratio, qkv_bias
        Token width, attention heads, hidden/dim ratio of the feed-forward layer, qkv bias.
    proj_drop, attn_drop, drop_path
        Dropout after projections, on attention weights, and stochastic-depth probability.
    causal
        Causal self-attention.
    norm_layer, act_layer, mlp_layer
        Classes for the norms, the activation and the feed-forward layer.

    Examples
    --------
    >>> from functools import partial
    >>> block = Block(32, num_heads=4, mlp_layer=partial(MoELayer, num_experts=4, top_k=2))
    >>> out = block(torch.randn(2, 6, 32), capture_routing=True)
    >>> out.output.shape, out.routing.top_k_index.shape
    (torch.Size([2, 6, 32]), torch.Size([12, 2]))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        causal: bool = False,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        mlp_layer: type[nn.Module] = Mlp,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop, causal)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @property
    def is_moe(self) -> bool:
        """True if the feed-forward layer is a :class:`MoELayer`."""
        return isinstance(self.mlp, MoELayer)

    def forward(self, x: torch.Tensor, capture_routing: bool = False) -> BlockOutput:
        """Apply the block to ``x`` ``(b, n, d)``."""
        context = self.attn(self.norm1(x))
        x = x + self.drop_path1(context)
        if self.is_moe:
            # an MoE with score="context" routes on its tokens' attention output
            context = context if self.mlp.needs_context else None
            y, aux, routing = self.mlp(self.norm2(x), capture_routing=capture_routing, context=context)
        else:
            y, aux, routing = self.mlp(self.norm2(x)), x.new_zeros(()), None
        return BlockOutput(x + self.drop_path2(y), aux, routing)
