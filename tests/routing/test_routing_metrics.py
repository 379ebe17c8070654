from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ermoe_ba.layers.outputs import RoutingInfo
from ermoe_ba.routing import (
    LayerTrace,
    RoutingTrace,
    dead_experts,
    gini,
    load_metrics,
    normalized_entropy,
    subspace_overlap,
    tokens_per_expert,
    top1_change_rate,
)


def test_flat_load_has_zero_cv_and_full_entropy():
    ids = torch.arange(8).reshape(4, 2)
    m = load_metrics(ids, 8)
    assert m["tokens_per_expert"] == [1.0] * 8
    assert m["cv"] == 0.0
    assert m["normalized_entropy"] == pytest.approx(1.0)
    assert m["gini"] == pytest.approx(0.0)
    assert m["dead_experts"] == 0


def test_collapsed_load_matches_hand_computed_values():
    ids = torch.zeros(10, 1, dtype=torch.long)
    m = load_metrics(ids, 4)
    # counts (10, 0, 0, 0): mean 2.5, population sd sqrt(((7.5)^2 + 3 * 2.5^2) / 4)
    assert m["cv"] == pytest.approx(math.sqrt((7.5**2 + 3 * 2.5**2) / 4) / 2.5)
    assert m["normalized_entropy"] == 0.0
    assert m["gini"] == pytest.approx(3 / 4)
    assert m["max_over_mean"] == pytest.approx(4.0)
    assert m["dead_experts"] == 3


def test_entropy_and_gini_against_numpy_reference():
    counts = torch.tensor([5.0, 3.0, 2.0, 0.0, 10.0])
    p = counts.numpy() / counts.numpy().sum()
    nz = p[p > 0]
    assert normalized_entropy(counts) == pytest.approx(-(nz * np.log(nz)).sum() / np.log(5))
    x = np.sort(counts.numpy())
    mean_abs_diff = np.abs(x[:, None] - x[None, :]).mean()
    assert gini(counts) == pytest.approx(mean_abs_diff / (2 * x.mean()))


def test_dead_expert_threshold_is_one_percent():
    counts = torch.tensor([1000.0, 1000.0, 15.0, 25.0])  # 15/2040 < 1 %, 25/2040 > 1 %
    assert dead_experts(counts) == 1
    assert tokens_per_expert(torch.tensor([[3, 3], [1, 3]]), 4).tolist() == [0.0, 1.0, 0.0, 3.0]


def test_top1_change_rate_counts_changed_tokens():
    a = LayerTrace(
        0, torch.tensor([[[0, 1], [2, 3], [1, 0], [3, 2]]]), torch.ones(1, 4, 2), torch.ones(1, 4, 4)
    )
    b = LayerTrace(
        0, torch.tensor([[[0, 2], [3, 2], [1, 3], [0, 1]]]), torch.ones(1, 4, 2), torch.ones(1, 4, 4)
    )
    assert top1_change_rate(a, a) == 0.0
    assert top1_change_rate(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different tokens"):
        top1_change_rate(a.top1, b.top1[:, :2])


def test_subspace_overlap_of_disjoint_and_shared_bases():
    eye = torch.eye(6)
    bases = torch.stack([eye[:, 0:2], eye[:, 2:4], eye[:, 1:3]])  # (e=3, d=6, r=2)
    overlap = subspace_overlap(bases)
    assert torch.allclose(overlap.diagonal(), torch.ones(3))
    assert overlap[0, 1] == 0.0
    assert overlap[0, 2] == pytest.approx(0.5)  # share one of two directions
    assert torch.allclose(overlap, overlap.T)


def test_trace_reshapes_flat_routing_and_drops_prefix_tokens():
    batch, tokens, k, e = 2, 3, 2, 4
    flat_ids = torch.arange(batch * (tokens + 1) * k).reshape(-1, k) % e
    info = RoutingInfo(flat_ids, torch.full(flat_ids.shape, 0.5), torch.rand(batch * (tokens + 1), e))
    layer = LayerTrace.from_info(1, info, batch, prefix=1)
    assert layer.top_k_index.shape == (batch, tokens, k)
    assert torch.equal(layer.top_k_index[1], flat_ids.reshape(batch, tokens + 1, k)[1, 1:])
    trace = RoutingTrace({1: layer}, grid_size=(3,))
    joined = RoutingTrace.concat([trace, trace])
    assert joined[1].top_k_index.shape == (2 * batch, tokens, k)
    assert joined.layer_indices == [1]
