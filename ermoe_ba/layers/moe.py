"""The mixture-of-experts feed-forward layer: router + expert bank + dispatch backend."""

from __future__ import annotations

import torch
from torch import nn

from ermoe_ba.layers._checks import check_choice, check_positive_int, check_probability
from ermoe_ba.layers._projection import routed_projection
from ermoe_ba.layers.dispatch import SlotOrder, capacity_keep_mask, eager_dispatch, get_dispatch, sort_slots
from ermoe_ba.layers.eigen_experts import EigenExperts
from ermoe_ba.layers.experts import DenseExperts, ExpertWeights
from ermoe_ba.layers.outputs import MoEOutput, RoutingInfo
from ermoe_ba.layers.routers import EIGEN_SCORES, EigenbasisRouter, RouterOutput, SoftmaxTopKRouter, token_norms

__all__ = ["CENTER_MOMENTUM", "ROUTERS", "WHITEN_SHRINKAGE", "MoELayer"]

ROUTERS = ("ermoe", "softmax")
CENTER_MOMENTUM = 0.1  # weight of each training batch in the running token statistics (centred, whitened scores)
WHITEN_SHRINKAGE = 0.1  # score="whitened": covariance shrunk this far towards its mean eigenvalue before inverting


class MoELayer(nn.Module):
    """Sparse mixture-of-experts replacement for a transformer block's MLP.

    ``router="ermoe"``: eigen-form experts routed by the eigenbasis score ``||V_eᵀ x|| / ||x||``
    (or, with ``score="context"``, the cosine of ``V_eᵀ x`` and ``V_eᵀ c`` for the token's
    attention context ``c``); the projection ``V_eᵀ x`` is computed once (one matmul for all
    experts) and feeds both the router and the experts' first layer. With a fast dispatch backend
    only the routed ``(token, expert)`` blocks are kept and differentiated, the experts read them
    per slot and the projection's backward visits only them
    (:mod:`ermoe_ba.layers._projection`); ``dispatch="eager"`` keeps plain autograd throughout as
    the reference. ``router="softmax"``: dense experts behind a learned softmax top-k router
    (Mixtral style) with optional Switch balance loss and z-loss.

    Axis letters: ``n`` flattened tokens, ``k`` experts per token, ``e`` experts.

    Parameters
    ----------
    dim
        Token width ``d`` (``in_features`` is accepted as an alias, so the class can stand in for
        :class:`~ermoe_ba.layers.mlp.Mlp` as a block's ``mlp_layer`` via ``functools.partial``).
    hidden_features
        Hidden width of each expert (default ``dim``); see
        :func:`~ermoe_ba.layers.sizing.equal_active_hidden` to match a dense MLP's active size.
    num_experts, top_k
        ``e`` and ``k``.
    router
        ``"ermoe"`` or ``"softmax"``.
    expert_rank
        Basis rank ``r < dim`` of the eigen experts (default ``dim // num_experts``).
    balance_loss_weight, z_loss_weight
        Softmax router auxiliary losses (ignored by ERMoE, which needs none).
    route_threshold
        ERMoE score threshold below which experts are ineligible (a token still gets ``k``).
    dispatch
        Registered backend name (``"sorted"`` fast path, ``"eager"`` reference).
    capacity_factor
        None (default): no token is ever dropped. Otherwise each expert takes at most
        ``ceil(capacity_factor · n · k / e)`` slots and the overflow count is reported.
    disjoint_bases
        Keep the ERMoE input bases mutually orthogonal.
    act_layer
        Activation class of the experts.
    orthogonality_weight
        Weight of the soft penalty ``Σ ||BᵀB - I||²_F`` on the raw ERMoE bases (default 0).
    gate, temperature
        ERMoE gate normalisation (``"normalize"`` or ``"softmax"``) and softmax temperature.
    score
        ERMoE score: ``"subspace"`` (default), ``"context"`` (needs ``context=`` in
        :meth:`forward`) or ``"centered"``: ``||V_eᵀ(x - m)|| / ||x - m||`` with ``m`` the running
        mean of the layer's input tokens (buffer ``token_mean``, updated by every training forward
        with weight ``CENTER_MOMENTUM``, like BatchNorm's running mean, and fixed in eval mode).
        Tokens of one image share a large common component (after the pre-norm it carried 41-57 %
        of the token energy in the bundled model); the centred score routes what sets a token
        apart instead. On the brain-age CV (README) it neither flattened the load nor helped
        accuracy, so it is an option, not the default. The layer projects ``x - m`` once and the
        experts read ``V_eᵀ(x - m) + V_eᵀ m = V_eᵀ x``, so router and experts still share one
        projection. ``"whitened"``: the subspace score of the whitened token
        ``z = W (x - m)``, ``W = Σ^{-1/2}`` from the running mean ``m`` and covariance ``Σ`` of the
        layer's input tokens (buffers ``token_mean``, ``token_cov``; updated like ``"centered"``),
        with ``Σ`` shrunk by ``WHITEN_SHRINKAGE`` towards ``tr(Σ)/d · I`` so that no direction is
        amplified more than ~``sqrt(d / WHITEN_SHRINKAGE)`` times. Pre-norm tokens are strongly
        anisotropic (in the bundled brain-age model five directions carry ~90 % of their variance),
        so the plain score sends most tokens to the experts whose bases hold those directions;
        whitened, every orthonormal basis holds ``r / d`` of a token's energy on average and
        routing follows what is specific to the token. The experts still read ``V_eᵀ x`` (a second,
        unshared projection), so only routing changes. No loss term is involved.
    orthogonalization
        ``"qr"`` or ``"parametrization"`` (see :mod:`ermoe_ba.layers.eigen_experts`).
    drop
        Dropout on the layer output.

    Examples
    --------
    >>> layer = MoELayer(32, hidden_features=64, num_experts=4, top_k=2)
    >>> out = layer(torch.randn(2, 10, 32), capture_routing=True)
    >>> out.output.shape, out.aux_loss.item(), out.routing.top_k_index.shape
    (torch.Size([2, 10, 32]), 0.0, torch.Size([20, 2]))
    """

    def __init__(
        self,
        dim: int | None = None,
        hidden_features: int | None = None,
        num_experts: int = 8,
        top_k: int = 2,
        router: str = "ermoe",
        expert_rank: int | None = None,
        balance_loss_weight: float = 0.0,
        z_loss_weight: float = 0.0,
        route_threshold: float | None = None,
        dispatch: str = "sorted",
        capacity_factor: float | None = None,
        disjoint_bases: bool = False,
        act_layer: type[nn.Module] = nn.GELU,
        orthogonality_weight: float = 0.0,
        *,
        gate: str = "normalize",
        temperature: float = 1.0,
        orthogonalization: str = "qr",
        score: str = "subspace",
        drop: float = 0.0,
        in_features: int | None = None,
    ) -> None:
        super().__init__()
        if dim is None and in_features is None:
            raise ValueError("MoELayer needs the token width: pass dim (or its alias in_features).")
        if dim is not None and in_features is not None and dim != in_features:
            raise ValueError(f"dim={dim} and in_features={in_features} disagree; pass only one of them.")
        self.dim = check_positive_int("dim", dim if dim is not None else in_features)
        self.hidden_features = check_positive_int("hidden_features", hidden_features or self.dim)
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.top_k = check_positive_int("top_k", top_k)
        self.router_type = check_choice("router", router, ROUTERS)
        check_choice("score", score, EIGEN_SCORES)
        self.dispatch_name = dispatch
        self.dispatch_fn = get_dispatch(dispatch)
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 or None, got {capacity_factor}.")
        self.capacity_factor = capacity_factor
        if orthogonality_weight < 0:
            raise ValueError(f"orthogonality_weight must be >= 0, got {orthogonality_weight}.")
        self.orthogonality_weight = float(orthogonality_weight)
        self.experts: EigenExperts | DenseExperts
        if self.router_type == "ermoe":
            self.router = EigenbasisRouter(num_experts, top_k, route_threshold, gate, temperature, score)
            self.experts = EigenExperts(
                num_experts,
                self.dim,
                self.hidden_features,
                expert_rank,
                disjoint_bases,
                orthogonalization,
                act_layer,
            )
        else:
            self.router = SoftmaxTopKRouter(self.dim, num_experts, top_k, balance_loss_weight, z_loss_weight)
            self.experts = DenseExperts(num_experts, self.dim, self.hidden_features, act_layer)
        self.drop = nn.Dropout(check_probability("drop", drop))
        if self.router_type == "ermoe" and score in ("centered", "whitened"):
            self.register_buffer("token_mean", torch.zeros(self.dim))
        if self.router_type == "ermoe" and score == "whitened":
            self.register_buffer("token_cov", torch.eye(self.dim))

    @property
    def needs_context(self) -> bool:
        """True if :meth:`forward` needs ``context`` (ERMoE with ``score="context"``)."""
        return isinstance(self.router, EigenbasisRouter) and self.router.score == "context"

    def forward(
        self, x: torch.Tensor, capture_routing: bool = False, context: torch.Tensor | None = None
    ) -> MoEOutput:
        """Apply the layer to the last axis of ``x`` ``(..., d)``.

        ``context`` (same shape as ``x``) is the tokens' attention context, read only by
        ``score="context"``. Returns a :class:`MoEOutput`; ``routing`` (detached, on flattened
        tokens) only when ``capture_routing`` is True.
        """
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"MoELayer(dim={self.dim}) got input of shape {tuple(x.shape)}; last axis must be {self.dim}."
            )
        tokens = x.reshape(-1, self.dim)
        slot_inputs, slot_order = False, None
        if isinstance(self.experts, EigenExperts):
            assert isinstance(self.router, EigenbasisRouter)
            inputs, routed, weights, slot_order = self._route_eigen(tokens, context)
            slot_inputs = self.dispatch_fn is not eager_dispatch
        else:
            routed = self.router(tokens)
            inputs = tokens.unsqueeze(1)
            weights = self.experts.expert_weights()
        keep, dropped = None, 0
        if self.capacity_factor is not None:
            keep, dropped = capacity_keep_mask(routed.top_k_index, self.num_experts, self.capacity_factor)
        gate = routed.top_k_weight.to(x.dtype)
        act = self.experts.act
        out = self.dispatch_fn(
            inputs, routed.top_k_index, gate, weights, act, keep, slot_inputs=slot_inputs, slot_order=slot_order
        )
        aux = routed.aux_loss
        if self.orthogonality_weight and isinstance(self.experts, EigenExperts):
            aux = aux + self.orthogonality_weight * self.experts.orthogonality_penalty()
        routing = None
        if capture_routing:
            routing = RoutingInfo(
                routed.top_k_index.detach(), routed.top_k_weight.detach(), routed.scores.detach(), dropped
            )
        return MoEOutput(self.drop(out).reshape(x.shape), aux, routing)

    def _route_eigen(
        self, tokens: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, RouterOutput, ExpertWeights, SlotOrder | None]:
        experts, router = self.experts, self.router
        assert isinstance(experts, EigenExperts) and isinstance(router, EigenbasisRouter)
        v, u = experts.bases()
        context_projection = None
        if router.score == "context":
            if context is None or context.shape[-1] != self.dim or context.numel() != tokens.numel():
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"MoELayer(score='context') needs context= of the input's shape (n tokens x {self.dim}), "
                    f"got {got}; Block passes its attention output, or use score='subspace'."
                )
            context_projection = experts.project(context.reshape(-1, self.dim), v)  # (n, e, r)
        # score="centered" routes x - m and its projection; the experts read V_eᵀx = V_eᵀ(x - m) + V_eᵀm
        offset, routed_tokens, expert_tokens = None, tokens, None
        if router.score == "centered":
            mean = self._running_token_mean(tokens)
            offset = experts.project(mean.unsqueeze(0), v)[0]  # (e, r), differentiable in V
            routed_tokens = tokens - mean
        elif router.score == "whitened":  # route W (x - m); the experts read V_eᵀ x, projected separately
            mean, whitening = self._running_token_whitening(tokens)
            routed_tokens, expert_tokens = (tokens - mean) @ whitening, tokens
        with torch.set_grad_enabled(torch.is_grad_enabled() and router.needs_token_norm_gradient):
            norm = token_norms(routed_tokens)  # the default gates do not depend on it: skip its backward
        if self.dispatch_fn is eager_dispatch:
            scored = experts.project(routed_tokens, v)  # (n, e, r), shared by router and experts
            inputs = scored if offset is None else scored + offset
            if expert_tokens is not None:
                inputs = experts.project(expert_tokens, v)
            return inputs, router(scored, norm, context_projection), experts.expert_weights(u), None
        # fast path: score all experts without autograd, keep the routed slots' projections (n, k, r)
        # and differentiate only those (the experts then read per-slot inputs)
        with torch.no_grad():
            projection = experts.project(routed_tokens, v)
            ctx = None if context_projection is None else context_projection.detach()
            scores, ranking = router.scores(projection, norm, ctx)
            top_k_index = router.select(scores, ranking)
            # row t*e + top_k_index[t, j] of the (n*e, r) projection; index_select copies whole rows
            # (several times faster on CPU than gather with an expanded index)
            flat = top_k_index + torch.arange(0, tokens.shape[0] * self.num_experts, self.num_experts).unsqueeze(1)
            selected = projection.flatten(0, 1).index_select(0, flat.flatten()).unflatten(0, flat.shape)  # (n, k, r)
            if expert_tokens is not None:
                unrouted = experts.project(expert_tokens, v).flatten(0, 1)
                selected_inputs = unrouted.index_select(0, flat.flatten()).unflatten(0, flat.shape)
            slot_order = sort_slots(top_k_index, self.num_experts)  # for the projection's backward and the dispatch
        grad = torch.is_grad_enabled()
        scored = routed_projection(routed_tokens, v, selected, top_k_index, slot_order) if grad else selected
        selected_ctx = None
        if context_projection is not None:
            selected_ctx = context_projection.gather(1, top_k_index.unsqueeze(-1).expand(-1, -1, experts.expert_rank))
        sel_scores, sel_ranking = router.scores(scored, norm, selected_ctx)
        weight = router.gate_weights(sel_scores, sel_ranking)
        inputs = scored if offset is None else scored + offset[top_k_index]
        if expert_tokens is not None:
            inputs = (
                routed_projection(expert_tokens, v, selected_inputs, top_k_index, slot_order)
                if grad
                else selected_inputs
            )
        routed = RouterOutput(scores, top_k_index, weight, scores.new_zeros(()))
        return inputs, routed, experts.expert_weights(u), slot_order

    @torch.no_grad()
    def _running_token_mean(self, tokens: torch.Tensor) -> torch.Tensor:
        """``token_mean`` ``(d,)``, first moved towards this batch's mean when training."""
        if self.training and tokens.shape[0]:
            batch_mean = tokens.detach().mean(0, dtype=self.token_mean.dtype)  # no float32 copy of bf16 tokens
            self.token_mean.lerp_(batch_mean, CENTER_MOMENTUM)
        return self.token_mean.to(tokens.dtype)

    @torch.no_grad()
    def _running_token_whitening(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``token_mean`` and the shrunk inverse square root of ``token_cov``, after a training update."""
        if self.training and tokens.shape[0] > 1:
            self.token_cov.lerp_(torch.cov(tokens.detach().mT.to(self.token_cov.dtype)), CENTER_MOMENTUM)
        mean = self._running_token_mean(tokens)
        cov = self.token_cov.float()
        values, vectors = torch.linalg.eigh((cov + cov.mT) / 2)
        values = (1 - WHITEN_SHRINKAGE) * values + WHITEN_SHRINKAGE * values.mean()
        whitening = (vectors * values.clamp_min(1e-12).rsqrt()) @ vectors.mT
        return mean, whitening.to(tokens.dtype)

    def active_parameter_count(self) -> int:
        """Parameters one token touches: the router, all bases (ERMoE scores need them) and ``k`` experts."""
        router = sum(p.numel() for p in self.router.parameters())
        return router + self.experts.active_parameter_count(self.top_k)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden_features={self.hidden_features}, num_experts={self.num_experts}, "
            f"top_k={self.top_k}, router={self.router_type!r}, dispatch={self.dispatch_name!r}, "
            f"capacity_factor={self.capacity_factor}"
        )
