"""Dispatch backends: send token-expert slots to the experts and gather the gated outputs.

A backend is a function
``fn(inputs, top_k_index, top_k_weight, weights, act, keep=None, *, slot_inputs=False, slot_order=None) -> out``
on flattened tokens. Axis letters: ``n`` tokens, ``k`` slots per token, ``e`` experts, ``g`` input
groups (``e`` for eigen experts, which read their own projection ``V_eᵀ x``; 1 for dense experts,
which read the token), ``i`` expert input width, ``d`` output width.

* ``inputs`` ``(n, g, i)``, or with ``slot_inputs=True`` ``(n, k, i)``: one input per slot, the
  one its expert reads (the ERMoE fast path keeps only the routed projections);
* ``top_k_index`` / ``top_k_weight`` ``(n, k)``;
* ``weights`` an :class:`~ermoe_ba.layers.experts.ExpertWeights`; ``act`` the activation module;
* ``keep`` optional ``(n, k)`` bool, False for slots dropped by a capacity limit;
* ``slot_order`` optional :class:`SlotOrder` of ``top_k_index`` from :func:`sort_slots` (no
  ``keep``), for callers that sorted the slots already; backends that sort may reuse it;
* ``out[t] = Σ_j keep[t, j] · top_k_weight[t, j] · expert_{top_k_index[t, j]}(z_{t, j})`` with
  ``z_{t, j}`` = ``inputs[t, j]`` (slot inputs), ``inputs[t, top_k_index[t, j]]`` (``g = e``) or
  ``inputs[t, 0]`` (``g = 1``).

``"eager"`` is the reference (a loop over experts, plain autograd); ``"sorted"`` sorts the slots by
expert and runs a fused per-expert kernel with a hand-written backward. Backends register by name
with :func:`register_dispatch` and must match ``"eager"`` (tests check 1e-5 in outputs and
gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import nn

from ermoe_ba.layers._checks import check_choice
from ermoe_ba.layers._grouped import grouped_experts
from ermoe_ba.layers.experts import ExpertWeights

__all__ = [
    "DispatchFn",
    "SlotOrder",
    "available_dispatch",
    "capacity_keep_mask",
    "eager_dispatch",
    "get_dispatch",
    "register_dispatch",
    "sort_slots",
    "sorted_dispatch",
]


class SlotOrder(NamedTuple):
    """Token-expert slots ``s = t*k + j`` sorted by expert (stable).

    ``order`` ``(m,)`` lists the kept slots, expert 0's first; ``counts[e]`` of them go to expert ``e``.
    """

    order: torch.Tensor
    counts: list[int]


def sort_slots(top_k_index: torch.Tensor, num_experts: int, keep: torch.Tensor | None = None) -> SlotOrder:
    """Sort the slots of ``top_k_index`` ``(n, k)`` by expert, leaving out those ``keep`` drops.

    Examples
    --------
    >>> sort_slots(torch.tensor([[1, 0], [1, 2]]), 3)
    SlotOrder(order=tensor([1, 0, 2, 3]), counts=[1, 2, 1])
    """
    expert = top_k_index.reshape(-1)
    if keep is not None:
        expert = torch.where(keep.reshape(-1), expert, num_experts)  # dropped slots sort last
    order = torch.argsort(expert, stable=True)
    counts = torch.bincount(expert, minlength=num_experts + 1)[:num_experts].tolist()
    return SlotOrder(order[: sum(counts)], counts)


class DispatchFn(Protocol):
    """Signature of a dispatch backend (see the module docstring)."""

    def __call__(
        self,
        inputs: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weight: torch.Tensor,
        weights: ExpertWeights,
        act: nn.Module,
        keep: torch.Tensor | None = None,
        *,
        slot_inputs: bool = False,
        slot_order: SlotOrder | None = None,
    ) -> torch.Tensor: ...


_REGISTRY: dict[str, DispatchFn] = {}


def register_dispatch(name: str) -> Callable[[DispatchFn], DispatchFn]:
    """Decorator registering a dispatch backend under ``name`` (must be new)."""

    def decorator(fn: DispatchFn) -> DispatchFn:
        if name in _REGISTRY:
            raise ValueError(f"dispatch backend {name!r} is already registered ({_REGISTRY[name].__name__}).")
        _REGISTRY[name] = fn
        return fn

    return decorator


def get_dispatch(name: str) -> DispatchFn:
    """The backend registered as ``name``; a ValueError suggests the closest name otherwise."""
    return _REGISTRY[check_choice("dispatch", name, sorted(_REGISTRY))]


def available_dispatch() -> tuple[str, ...]:
    """Names of the registered backends."""
    return tuple(sorted(_REGISTRY))


def capacity_keep_mask(top_k_index: torch.Tensor, num_experts: int, capacity_factor: float) -> tuple[torch.Tensor, int]:
    """Which slots fit under ``capacity = ceil(capacity_factor · n · k / e)`` slots per expert.

    Priority goes to better slots (every token's first choice before any second choice), then to
    earlier tokens. Returns ``keep`` ``(n, k)`` bool and the number of dropped slots.

    Examples
    --------
    >>> keep, dropped = capacity_keep_mask(torch.tensor([[0, 1], [0, 1], [0, 1]]), 2, 0.5)
    >>> keep.tolist(), dropped  # capacity = ceil(0.5 * 6 / 2) = 2 per expert
    ([[True, True], [True, True], [False, False]], 2)
    """
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0 (or None for no limit), got {capacity_factor}.")
    n, k = top_k_index.shape
    capacity = max(1, math.ceil(capacity_factor * n * k / num_experts))
    flat = top_k_index.t().reshape(-1)  # slot-major: rank j of every token before rank j + 1
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    keep = torch.empty_like(flat, dtype=torch.bool)
    keep[order] = position < capacity
    keep = keep.view(k, n).t()
    return keep, int((~keep).sum())


@register_dispatch("eager")
def eager_dispatch(
    inputs: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weight: torch.Tensor,
    weights: ExpertWeights,
    act: nn.Module,
    keep: torch.Tensor | None = None,
    *,
    slot_inputs: bool = False,
    slot_order: SlotOrder | None = None,
) -> torch.Tensor:
    """Reference backend: for each expert gather its slots, run it, gate, ``index_add`` back."""
    n, groups, width = inputs.shape
    flat_inputs = inputs.reshape(n * groups, width)
    out = inputs.new_zeros(n, weights.fc2_weight.shape[-1])
    for e in range(weights.fc1_weight.shape[0]):
        mask = top_k_index == e
        if keep is not None:
            mask = mask & keep
        token, slot = mask.nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        z = flat_inputs[token * groups + (slot if slot_inputs else e if groups > 1 else 0)]
        hidden = act(z @ weights.fc1_weight[e] + weights.fc1_bias[e])
        y = hidden @ weights.fc2_weight[e] + weights.fc2_bias[e]
        out = out.index_add(0, token, y * top_k_weight[token, slot].unsqueeze(1))
    return out


@register_dispatch("sorted")
def sorted_dispatch(
    inputs: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weight: torch.Tensor,
    weights: ExpertWeights,
    act: nn.Module,
    keep: torch.Tensor | None = None,
    *,
    slot_inputs: bool = False,
    slot_order: SlotOrder | None = None,
) -> torch.Tensor:
    """Sort slots by expert, then one fused ``fc1 -> act -> fc2 -> gate -> index_add`` per expert."""
    n, groups, width = inputs.shape
    k, num_experts = top_k_index.shape[1], weights.fc1_weight.shape[0]
    if slot_order is None or keep is not None:
        slot_order = sort_slots(top_k_index, num_experts, keep)
    order, counts = slot_order
    token = order // k
    if slot_inputs:
        rows = order  # slot s = t*k + j is row s of the flattened (n*k, i) inputs
    else:
        rows = token * groups + top_k_index.reshape(-1)[order] if groups > 1 else token
    gate = top_k_weight.reshape(-1)[order]
    return grouped_experts(inputs.reshape(n * groups, width), gate, tuple(weights), rows, token, counts, n, act)
