"""Routing traces and metrics of expert load, stability and specialisation (torch only)."""

from __future__ import annotations

from ermoe_ba.routing.metrics import (
    DEAD_EXPERT_FRACTION,
    coefficient_of_variation,
    dead_experts,
    gini,
    load_metrics,
    normalized_entropy,
    subspace_overlap,
    tokens_per_expert,
    top1_change_rate,
    trace_load_metrics,
)
from ermoe_ba.routing.trace import LayerTrace, RoutingTrace

__all__ = [
    "DEAD_EXPERT_FRACTION",
    "LayerTrace",
    "RoutingTrace",
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
