"""Routers: the ERMoE eigenbasis-score router and the learned softmax top-k baseline.

Both work on flattened tokens and return ``RouterOutput(scores (n, e), top_k_index (n, k),
top_k_weight (n, k), aux_loss)``; indices are best first and the weights sum to 1 over ``k``.
Routing runs in at least float32 whatever the activation dtype (norm ratios and softmaxes
underflow in half precision).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ermoe_ba.layers._checks import check_choice, check_positive_int
from ermoe_ba.layers.losses import router_z_loss, switch_balance_loss

__all__ = [
    "EIGEN_GATES",
    "EIGEN_SCORES",
    "EigenbasisRouter",
    "RouterOutput",
    "SoftmaxTopKRouter",
    "eigenbasis_scores",
    "token_norms",
]

EIGEN_GATES = ("normalize", "softmax")
EIGEN_SCORES = ("subspace", "context", "centered", "whitened")
_EPS = 1e-12  # float32 norms below this count as a zero token


class RouterOutput(NamedTuple):
    """Routing decision for ``n`` tokens (see the module docstring for shapes)."""

    scores: torch.Tensor
    top_k_index: torch.Tensor
    top_k_weight: torch.Tensor
    aux_loss: torch.Tensor


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def token_norms(x: torch.Tensor) -> torch.Tensor:
    """Norms ``||x||`` (at least float32) over the last axis, with a finite gradient at zero.

    ``torch.linalg.vector_norm`` backpropagates 0 (not NaN) through a zero vector.
    """
    return torch.linalg.vector_norm(_at_least_float32(x), dim=-1)


def eigenbasis_scores(projection: torch.Tensor, token_norm: torch.Tensor) -> torch.Tensor:
    """Eigenbasis score ``a_e = ||V_eᵀ x|| / ||x||`` in [0, 1]; 0 for a zero token.

    Parameters
    ----------
    projection
        ``(n, e, r)`` projections ``V_eᵀ x`` on orthonormal bases.
    token_norm
        ``(n,)`` token norms ``||x||``.

    Examples
    --------
    >>> proj = torch.tensor([[[3.0, 0.0], [0.0, 0.0]]])  # token (3, 4, 0, 0) on two 2-d bases
    >>> eigenbasis_scores(proj, torch.tensor([5.0]))
    tensor([[0.6000, 0.0000]])
    """
    norms = token_norms(projection)  # (n, e)
    return (norms / _at_least_float32(token_norm).clamp_min(_EPS).unsqueeze(-1)).clamp(0.0, 1.0)


class EigenbasisRouter(nn.Module):
    """Route each token to the ``k`` experts whose input basis it aligns with best.

    No parameters of its own: the scores come from the experts' bases ``V_e`` through the shared
    projection, so gradients of the gates flow into ``V_e`` and into the tokens.

    Parameters
    ----------
    num_experts
        ``e``.
    top_k
        Experts per token ``k`` (``<= e``).
    route_threshold
        Experts with score below this are ineligible, but a token always gets ``k`` experts: the
        remaining picks are filled from the best ineligible scores.
    gate
        ``"normalize"``: ``g = a / Σ_sel a`` (``1/k`` each if all selected scores are 0);
        ``"softmax"``: softmax of the selected scores divided by ``temperature``.
    temperature
        Softmax temperature (``gate="softmax"`` only).
    score
        ``"subspace"`` (default): ``a_e = ||V_eᵀ x|| / ||x||``. ``"context"``: the cosine between
        ``V_eᵀ x`` and ``V_eᵀ c`` for the token's attention context ``c``, clipped to [0, 1]
        (0 when either projection is zero); experts are ranked by the unclipped cosine, so a
        token whose cosines are all negative still gets its ``k`` least opposed experts.
        ``"centered"``: the subspace score of the token's deviation from the layer's running
        token mean ``m``, ``||V_eᵀ(x - m)|| / ||x - m||``; the router scores whatever centred
        projection and norm it is given (:class:`~ermoe_ba.layers.moe.MoELayer` keeps ``m``).
        ``"whitened"``: likewise for the whitened token ``W (x - m)`` (``MoELayer`` keeps the
        running statistics and ``W``).

    Examples
    --------
    >>> router = EigenbasisRouter(num_experts=4, top_k=2)
    >>> out = router(torch.randn(3, 4, 2), torch.full((3,), 10.0))
    >>> out.top_k_index.shape, out.top_k_weight.sum(-1)
    (torch.Size([3, 2]), tensor([1., 1., 1.]))
    """

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        route_threshold: float | None = None,
        gate: str = "normalize",
        temperature: float = 1.0,
        score: str = "subspace",
    ) -> None:
        super().__init__()
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.top_k = check_positive_int("top_k", top_k)
        if top_k > num_experts:
            raise ValueError(f"top_k={top_k} exceeds num_experts={num_experts}.")
        if route_threshold is not None and not 0.0 <= route_threshold <= 1.0:
            raise ValueError(f"route_threshold must lie in [0, 1] (scores are cosines), got {route_threshold}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.route_threshold = route_threshold
        self.gate = check_choice("gate", gate, EIGEN_GATES)
        self.temperature = float(temperature)
        self.score = check_choice("score", score, EIGEN_SCORES)

    @property
    def needs_token_norm_gradient(self) -> bool:
        """Whether the gates depend on ``||x||`` (only the softmax gate of the subspace and centred scores)."""
        return self.gate == "softmax" and self.score != "context"

    def _check_context(self, context_projection: torch.Tensor | None, projection: torch.Tensor) -> None:
        if self.score == "context" and (context_projection is None or context_projection.shape != projection.shape):
            got = None if context_projection is None else tuple(context_projection.shape)
            raise ValueError(
                f"score='context' needs context_projection V_e^T c of shape {tuple(projection.shape)}, got {got}; "
                "pass the block's attention output as context (Block does this)."
            )

    def scores(
        self, projection: torch.Tensor, token_norm: torch.Tensor, context_projection: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``(..., e)`` in [0, 1] and the ranking key the top-k reads (same leading shape).

        Works on all experts ``(n, e, r)`` or on selected ones ``(n, k, r)`` alike.
        """
        self._check_context(context_projection, projection)
        if self.score == "context":
            assert context_projection is not None
            dot = (_at_least_float32(projection) * _at_least_float32(context_projection)).sum(-1)
            cosine = dot / (token_norms(projection) * token_norms(context_projection)).clamp_min(_EPS)
            return cosine.clamp(0.0, 1.0), cosine
        norms = token_norms(projection)  # ||V_e^T x||
        return (norms / _at_least_float32(token_norm).clamp_min(_EPS).unsqueeze(-1)).clamp(0.0, 1.0), norms

    def select(self, scores: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
        """``top_k_index`` ``(n, k)``, best first, from :meth:`scores` (no gradient)."""
        if self.route_threshold is not None:
            # scores lie in [0, 1] and rankings in [-1, inf): -3 puts ineligible experts after eligible ones
            ranking = torch.where(scores >= self.route_threshold, ranking, ranking - 3.0)
        return ranking.detach().topk(self.top_k, dim=-1).indices

    def gate_weights(self, scores: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
        """Gates ``(n, k)`` from the selected experts' :meth:`scores` and ranking keys."""
        if self.gate == "softmax":
            return torch.softmax(scores / self.temperature, dim=-1)
        # subspace / centered: ||V_e^T x|| / sum (independent of ||x||); context: the clipped cosines
        selected = scores if self.score == "context" else ranking
        total = selected.sum(-1, keepdim=True)
        return torch.where(total > 0, selected / total.clamp_min(_EPS), torch.full_like(selected, 1.0 / self.top_k))

    def forward(
        self, projection: torch.Tensor, token_norm: torch.Tensor, context_projection: torch.Tensor | None = None
    ) -> RouterOutput:
        """Route from ``projection`` ``(n, e, r)``, ``token_norm`` ``(n,)`` (and ``V_eᵀ c`` for ``"context"``).

        ``||x||`` is the same for all experts of a token, so neither the ranking nor the
        ``"normalize"`` gates ``||V_eᵀx|| / Σ_sel ||V_eᵀx||`` depend on it; callers that only need
        those gradients may pass a ``token_norm`` computed without autograd.
        """
        scores, ranking = self.scores(projection, token_norm, context_projection)
        top_k_index = self.select(scores, ranking)
        weight = self.gate_weights(scores.gather(1, top_k_index), ranking.gather(1, top_k_index))
        return RouterOutput(scores, top_k_index, weight, scores.new_zeros(()))

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, top_k={self.top_k}, route_threshold={self.route_threshold}, "
            f"gate={self.gate!r}, temperature={self.temperature}, score={self.score!r}"
        )


class SoftmaxTopKRouter(nn.Module):
    """Learned linear router: softmax over experts, top-k, weights renormalised over the picks.

    Parameters
    ----------
    dim
        Token width ``d``.
    num_experts
        ``e``.
    top_k
        ``k``.
    balance_loss_weight
        Weight ``alpha`` of the Switch load-balancing loss ``alpha·E·Σ_e f_e·P_e`` (0 disables it).
    z_loss_weight
        Weight of the router z-loss (0 disables it).

    Examples
    --------
    >>> router = SoftmaxTopKRouter(8, num_experts=4, top_k=2, balance_loss_weight=0.01)
    >>> out = router(torch.randn(5, 8))
    >>> out.scores.shape, bool(out.aux_loss > 0)
    (torch.Size([5, 4]), True)
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        top_k: int,
        balance_loss_weight: float = 0.0,
        z_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.top_k = check_positive_int("top_k", top_k)
        if top_k > num_experts:
            raise ValueError(f"top_k={top_k} exceeds num_experts={num_experts}.")
        if balance_loss_weight < 0 or z_loss_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got balance_loss_weight={balance_loss_weight}, "
                f"z_loss_weight={z_loss_weight}."
            )
        self.balance_loss_weight = float(balance_loss_weight)
        self.z_loss_weight = float(z_loss_weight)
        self.linear = nn.Linear(check_positive_int("dim", dim), num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route tokens ``x`` ``(n, d)``."""
        logits = _at_least_float32(self.linear(x))  # (n, e)
        probs = torch.softmax(logits, dim=-1)
        top, top_k_index = probs.topk(self.top_k, dim=-1)
        weight = top / top.sum(-1, keepdim=True)
        aux = logits.new_zeros(())
        if self.balance_loss_weight:
            aux = aux + self.balance_loss_weight * switch_balance_loss(probs, top_k_index, self.num_experts)
        if self.z_loss_weight:
            aux = aux + self.z_loss_weight * router_z_loss(logits)
        return RouterOutput(probs, top_k_index, weight, aux)

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, balance_loss_weight={self.balance_loss_weight}, z_loss_weight={self.z_loss_weight}"
