"""Multi-head self-attention on ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ermoe_ba.layers._checks import check_positive_int, check_probability

__all__ = ["Attention"]


class Attention(nn.Module):
    """Multi-head self-attention, bidirectional or causal.

    Axis letters: ``b`` batch, ``n`` tokens, ``d`` width, ``h`` heads, ``c`` head width.

    Parameters
    ----------
    dim
        Token width ``d``; must be divisible by ``num_heads``.
    num_heads
        Number of heads ``h``.
    qkv_bias
        Add a bias to the query/key/value projection.
    attn_drop
        Dropout on the attention weights (training only).
    proj_drop
        Dropout after the output projection.
    causal
        If True, token ``i`` attends only to tokens ``<= i``.

    Examples
    --------
    >>> attn = Attention(64, num_heads=4)
    >>> attn(torch.zeros(2, 10, 64)).shape
    torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; pick a divisor of dim.")
        self.num_heads = num_heads
        self.causal = causal
        self.attn_drop = check_probability("attn_drop", attn_drop)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(check_probability("proj_drop", proj_drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens of ``x`` ``(b, n, d)``; returns ``(b, n, d)``."""
        q, k, v = rearrange(self.qkv(x), "b n (three h c) -> three b h n c", three=3, h=self.num_heads)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=self.causal)
        return self.proj_drop(self.proj(rearrange(out, "b h n c -> b n (h c)")))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, causal={self.causal}"
