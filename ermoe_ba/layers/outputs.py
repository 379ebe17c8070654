"""Named outputs shared by the MoE layer, the block and the trunk."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MoEOutput", "RoutingInfo"]


class RoutingInfo(NamedTuple):
    """Routing decisions of one MoE layer on flattened tokens.

    Axis letters: ``n`` tokens, ``k`` experts per token, ``e`` experts.

    Attributes
    ----------
    top_k_index
        ``(n, k)`` int64, the experts each token was sent to, best first.
    top_k_weight
        ``(n, k)`` gate weights of those experts (sum to 1 over ``k``).
    scores
        ``(n, e)`` router scores: eigenbasis scores in [0, 1] for ERMoE, softmax
        probabilities for the softmax router.
    dropped
        Number of token-expert assignments dropped by a capacity limit (0 without one).
    """

    top_k_index: torch.Tensor
    top_k_weight: torch.Tensor
    scores: torch.Tensor
    dropped: int = 0


class MoEOutput(NamedTuple):
    """What an MoE feed-forward layer returns.

    Attributes
    ----------
    output
        Same shape as the layer input.
    aux_loss
        Scalar auxiliary loss (load balancing, z-loss, orthogonality penalty); exactly 0 for
        ERMoE with default settings.
    routing
        :class:`RoutingInfo` when the caller asked for it (``capture_routing=True``), else None.
    """

    output: torch.Tensor
    aux_loss: torch.Tensor
    routing: RoutingInfo | None
