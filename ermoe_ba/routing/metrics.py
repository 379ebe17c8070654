"""Load, stability and specialisation metrics of expert routing.

Every function takes plain tensors (or a :class:`~ermoe_ba.routing.trace.LayerTrace`) so the
same numbers come out of training, benchmarks and the interpretability report.
"""

from __future__ import annotations

import math

import torch

from ermoe_ba.routing.trace import LayerTrace, RoutingTrace

__all__ = [
    "DEAD_EXPERT_FRACTION",
    "coefficient_of_variation",
    "dead_experts",
    "gini",
    "load_metrics",
    "normalized_entropy",
    "subspace_overlap",
    "tokens_per_expert",
    "top1_change_rate",
    "trace_load_metrics",
]

DEAD_EXPERT_FRACTION = 0.01
"""An expert that receives fewer than this fraction of the token–expert assignments is dead."""


def tokens_per_expert(top_k_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Count token–expert assignments per expert: ``(..., k)`` ids -> ``(e,)`` float counts.

    Examples
    --------
    >>> tokens_per_expert(torch.tensor([[0, 1], [0, 2]]), 4).tolist()
    [2.0, 1.0, 1.0, 0.0]
    """
    return torch.bincount(top_k_index.reshape(-1).long().cpu(), minlength=num_experts).float()


def coefficient_of_variation(counts: torch.Tensor) -> float:
    """Population standard deviation over mean of the per-expert load (0 = perfectly flat)."""
    counts = counts.double()
    mean = counts.mean()
    return float(counts.std(unbiased=False) / mean) if mean > 0 else float("nan")


def normalized_entropy(counts: torch.Tensor) -> float:
    """Entropy of the load distribution divided by ``log(e)``: 1 = flat, 0 = one expert takes all."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    if counts.numel() < 2:
        return 1.0
    return float(-(p * p.log()).sum() / math.log(counts.numel())) + 0.0  # no -0.0


def gini(counts: torch.Tensor) -> float:
    """Gini coefficient of the per-expert load (0 = flat, (e-1)/e = one expert takes all)."""
    x = torch.sort(counts.double()).values
    n = x.numel()
    if x.sum() == 0:
        return float("nan")
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float((2 * (ranks * x).sum()) / (n * x.sum()) - (n + 1) / n)


def dead_experts(counts: torch.Tensor, fraction: float = DEAD_EXPERT_FRACTION) -> int:
    """Number of experts with fewer than ``fraction`` of all assignments."""
    share = counts.double() / counts.sum()
    return int((share < fraction).sum())


def load_metrics(top_k_index: torch.Tensor, num_experts: int) -> dict[str, float | list[float]]:
    """All load metrics for one layer's ``(..., k)`` expert ids.

    Returns
    -------
    dict
        ``tokens_per_expert`` (list), ``cv``, ``normalized_entropy``, ``gini``, ``max_over_mean``,
        ``dead_experts``.

    Examples
    --------
    >>> m = load_metrics(torch.tensor([[0], [1], [2], [3]]), 4)
    >>> m["cv"], m["normalized_entropy"], m["dead_experts"]
    (0.0, 1.0, 0)
    """
    counts = tokens_per_expert(top_k_index, num_experts)
    mean = float(counts.mean())
    return {
        "tokens_per_expert": counts.tolist(),
        "cv": coefficient_of_variation(counts),
        "normalized_entropy": normalized_entropy(counts),
        "gini": gini(counts),
        "max_over_mean": float(counts.max()) / mean if mean > 0 else float("nan"),
        "dead_experts": dead_experts(counts),
    }


def trace_load_metrics(trace: RoutingTrace) -> dict[int, dict[str, float | list[float]]]:
    """:func:`load_metrics` for every MoE layer of a trace, keyed by block index."""
    return {i: load_metrics(layer.top_k_index, layer.num_experts) for i, layer in trace.layers.items()}


def top1_change_rate(before: LayerTrace | torch.Tensor, after: LayerTrace | torch.Tensor) -> float:
    """Fraction of tokens whose top-1 expert differs between two traces of the same tokens.

    Use it between consecutive checkpoints on fixed probe inputs, or between an input and a
    noisy / re-scanned copy of it.
    """
    a = before.top1 if isinstance(before, LayerTrace) else before
    b = after.top1 if isinstance(after, LayerTrace) else after
    if a.shape != b.shape:
        raise ValueError(f"traces cover different tokens: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a != b).double().mean())


def subspace_overlap(bases: torch.Tensor) -> torch.Tensor:
    """Pairwise overlap ``‖V_aᵀ V_b‖²_F / r`` of expert input bases ``(e, d, r)`` -> ``(e, e)``.

    1 on the diagonal for orthonormal bases; 0 between mutually orthogonal subspaces.
    """
    bases = bases.detach().double()
    rank = bases.shape[-1]
    cross = torch.einsum("adr,bds->abrs", bases, bases)
    return (cross.pow(2).sum(dim=(-1, -2)) / rank).float()
