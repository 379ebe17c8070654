from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from ermoe_ba.layers import (
    Block,
    Mlp,
    MoELayer,
    active_parameter_count,
    equal_active_hidden,
    token_norms,
)


def _by_hand(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of each token's k experts, each expert evaluated on the raw token."""
    routing = layer(x, capture_routing=True).routing
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(layer.top_k):
            e = int(routing.top_k_index[t, j])
            out[t] += routing.top_k_weight[t, j] * layer.experts.forward_expert(e, x[t : t + 1])[0]
    return out


@pytest.mark.parametrize("dispatch", ["eager", "sorted"])
@pytest.mark.parametrize("router", ["ermoe", "softmax"])
def test_no_token_dropped_output_is_gate_weighted_sum_of_k_experts(router, dispatch):
    torch.manual_seed(0)
    layer = MoELayer(10, 14, num_experts=5, top_k=2, router=router, dispatch=dispatch)
    x = torch.randn(25, 10)
    out = layer(x, capture_routing=True)
    assert out.routing.dropped == 0
    assert torch.allclose(out.routing.top_k_weight.sum(-1), torch.ones(25))
    torch.testing.assert_close(out.output, _by_hand(layer, x), atol=1e-5, rtol=1e-5)


def test_ermoe_routing_uses_the_eigenbasis_scores():
    torch.manual_seed(0)
    layer = MoELayer(12, 16, num_experts=4, top_k=2)
    x = torch.randn(30, 12)
    routing = layer(x, capture_routing=True).routing
    v, _ = layer.experts.bases()
    expected = torch.stack([(x @ v[e]).norm(dim=1) for e in range(4)], 1) / x.norm(dim=1, keepdim=True)
    torch.testing.assert_close(routing.scores, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(routing.top_k_index, expected.topk(2, dim=1).indices)


def test_one_expert_softmax_moe_equals_the_dense_mlp():
    torch.manual_seed(0)
    mlp = Mlp(16, hidden_features=24)
    moe = MoELayer(16, 24, num_experts=1, top_k=1, router="softmax")
    with torch.no_grad():
        moe.experts.W1[0] = mlp.fc1.weight.T
        moe.experts.b1[0] = mlp.fc1.bias
        moe.experts.W2[0] = mlp.fc2.weight.T
        moe.experts.b2[0] = mlp.fc2.bias
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(moe(x).output, mlp(x), atol=1e-6, rtol=1e-5)


def test_aux_loss_exactly_zero_for_ermoe_positive_for_balanced_softmax():
    torch.manual_seed(0)
    x = torch.randn(40, 16)
    aux = MoELayer(16, 24, num_experts=4, top_k=2)(x).aux_loss
    assert aux.ndim == 0 and aux.item() == 0.0
    assert MoELayer(16, 24, num_experts=4, router="softmax", balance_loss_weight=0.01)(x).aux_loss.item() > 0


@pytest.mark.parametrize("router", ["ermoe", "softmax"])
def test_capture_routing_switch_does_not_change_the_output(router):
    torch.manual_seed(0)
    layer = MoELayer(16, 24, num_experts=4, top_k=2, router=router)
    x = torch.randn(2, 9, 16)
    off, on = layer(x), layer(x, capture_routing=True)
    assert off.routing is None
    assert torch.equal(off.output, on.output)
    assert on.routing.top_k_index.shape == (18, 2) and on.routing.scores.shape == (18, 4)
    assert on.output.shape == x.shape


def test_gradient_flows_through_the_gates_into_v():
    torch.manual_seed(0)
    layer = MoELayer(8, 12, num_experts=4, top_k=2, dispatch="sorted").double()
    x = torch.randn(20, 8, dtype=torch.float64)
    weight = torch.randn(20, 8, dtype=torch.float64)
    (layer(x).output * weight).sum().backward()
    full = layer.experts.V.grad.clone()
    assert full.abs().sum() > 0

    # the same forward by hand, once with the gates frozen: the difference is the gate term
    def loss(freeze_gates: bool) -> torch.Tensor:
        v, _ = layer.experts.bases()
        proj = x @ v.permute(1, 0, 2).reshape(8, -1)
        routed = layer.router(proj.view(20, 4, -1), token_norms(x))
        gates = routed.top_k_weight.detach() if freeze_gates else routed.top_k_weight
        total = 0
        for t in range(20):
            for j in range(2):
                e = int(routed.top_k_index[t, j])
                total = total + gates[t, j] * (layer.experts.forward_expert(e, x[t : t + 1])[0] @ weight[t])
        return total

    (by_hand,) = torch.autograd.grad(loss(False), layer.experts.V)
    (frozen,) = torch.autograd.grad(loss(True), layer.experts.V)
    torch.testing.assert_close(by_hand, full)
    gate_term = by_hand - frozen
    assert gate_term.abs().max() > 1e-3 * full.abs().max()


def test_in_features_alias_and_block_injection():
    layer = MoELayer(in_features=16, hidden_features=32, num_experts=4)
    assert layer.dim == 16
    with pytest.raises(ValueError, match="disagree"):
        MoELayer(dim=16, in_features=8)
    with pytest.raises(ValueError, match="Did you mean 'softmax'"):
        MoELayer(16, 32, router="softmx")
    with pytest.raises(ValueError, match=r"MoELayer\(dim=16\) got input of shape \(2, 8\)"):
        layer(torch.zeros(2, 8))
    block = Block(16, 2, mlp_layer=functools.partial(MoELayer, num_experts=4, top_k=1, router="softmax"))
    assert isinstance(block.mlp, MoELayer) and block.mlp.hidden_features == 64


@pytest.mark.parametrize(("router", "e"), [("ermoe", 8), ("ermoe", 16), ("softmax", 8), ("softmax", 4)])
def test_equal_active_hidden_matches_the_dense_parameter_count(router, e):
    dim, dense_hidden, k = 64, 256, 2
    hidden = equal_active_hidden(dim, dense_hidden, e, k, router)
    layer = MoELayer(dim, hidden, num_experts=e, top_k=k, router=router)
    dense = active_parameter_count(Mlp(dim, dense_hidden))
    per_hidden_unit = k * (2 * dim + 1) if router == "softmax" else k * (dim // e + 1 + dim)
    assert abs(active_parameter_count(layer) - dense) <= per_hidden_unit / 2
    wrapped = nn.Sequential(nn.Linear(dim, dim), layer)
    assert active_parameter_count(wrapped) == dim * dim + dim + active_parameter_count(layer)


def test_equal_active_hidden_rejects_an_impossible_budget():
    with pytest.raises(ValueError, match="too few parameters"):
        equal_active_hidden(64, 4, num_experts=64, top_k=2, router="softmax")
