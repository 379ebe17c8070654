from __future__ import annotations

import math

import pytest
import torch

from ermoe_ba.layers import (
    EigenbasisRouter,
    EigenExperts,
    SoftmaxTopKRouter,
    eigenbasis_scores,
    router_z_loss,
    switch_balance_loss,
    token_norms,
)


def _route(experts: EigenExperts, router: EigenbasisRouter, x: torch.Tensor):
    return router(experts.project(x), token_norms(x))


def test_scores_are_cosines_to_the_subspaces_in_unit_interval():
    torch.manual_seed(0)
    experts = EigenExperts(6, 24, 16, expert_rank=3)
    x = torch.randn(50, 24)
    scores = _route(experts, EigenbasisRouter(6, 2), x).scores
    v, _ = experts.bases()
    for e in range(6):
        projector = v[e] @ v[e].T
        expected = (x @ projector).norm(dim=1) / x.norm(dim=1)
        torch.testing.assert_close(scores[:, e], expected, atol=1e-5, rtol=1e-5)
    assert scores.min() >= 0 and scores.max() <= 1
    in_span = v[2] @ torch.tensor([1.0, -2.0, 0.5])  # a token inside basis 2 scores 1 there
    assert _route(experts, EigenbasisRouter(6, 2), in_span[None]).scores[0, 2].item() == pytest.approx(1, abs=1e-5)


def test_zero_token_scores_zero_with_finite_gradients():
    torch.manual_seed(0)
    experts = EigenExperts(4, 8, 8)
    x = torch.randn(3, 8)
    x[1] = 0
    x.requires_grad_(True)
    out = _route(experts, EigenbasisRouter(4, 2), x)
    assert torch.all(out.scores[1] == 0)
    assert torch.allclose(out.top_k_weight[1], torch.full((2,), 0.5))  # 0/0 guard: uniform gates
    (out.scores.sum() + (out.top_k_weight * torch.randn(3, 2)).sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(experts.V.grad).all()
    assert torch.isfinite(out.scores).all() and torch.isfinite(out.top_k_weight).all()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_token_gets_k_distinct_best_experts_with_normalised_gates(k):
    torch.manual_seed(k)
    experts = EigenExperts(5, 20, 8)
    out = _route(experts, EigenbasisRouter(5, k), torch.randn(40, 20))
    assert out.top_k_index.shape == (40, k)
    assert all(len(set(row)) == k for row in out.top_k_index.tolist())
    best = out.scores.topk(k, dim=1).values
    torch.testing.assert_close(out.scores.gather(1, out.top_k_index), best)
    selected = out.scores.gather(1, out.top_k_index)
    torch.testing.assert_close(out.top_k_weight, selected / selected.sum(1, keepdim=True))


def test_threshold_makes_experts_ineligible_but_tokens_still_get_k():
    scores_for = torch.tensor([[0.9, 0.1, 0.5, 0.05], [0.2, 0.3, 0.1, 0.25]])
    # build projections whose norms are exactly these scores for unit-norm tokens
    projection = torch.zeros(2, 4, 2)
    projection[..., 0] = scores_for
    out = EigenbasisRouter(4, 2, route_threshold=0.4)(projection, torch.ones(2))
    assert out.top_k_index.tolist() == [[0, 2], [1, 3]]  # row 1: nobody eligible, best two fill in
    out = EigenbasisRouter(4, 3, route_threshold=0.4)(projection, torch.ones(2))
    assert out.top_k_index[0].tolist() == [0, 2, 1]


def test_softmax_gate_with_temperature():
    projection = torch.zeros(1, 3, 1)
    projection[0, :, 0] = torch.tensor([0.8, 0.6, 0.0])
    out = EigenbasisRouter(3, 2, gate="softmax", temperature=0.5)(projection, torch.ones(1))
    expected = torch.softmax(torch.tensor([0.8, 0.6]) / 0.5, dim=0)
    torch.testing.assert_close(out.top_k_weight[0], expected)


def test_eigenbasis_scores_zero_norm_guard():
    scores = eigenbasis_scores(torch.zeros(2, 3, 4), torch.zeros(2))
    assert torch.equal(scores, torch.zeros(2, 3))


def test_softmax_router_renormalises_top_k_and_reports_aux_losses():
    torch.manual_seed(0)
    router = SoftmaxTopKRouter(8, num_experts=4, top_k=2, balance_loss_weight=0.01, z_loss_weight=0.001)
    x = torch.randn(30, 8)
    out = router(x)
    probs = torch.softmax(router.linear(x), dim=-1)
    torch.testing.assert_close(out.scores, probs)
    top = probs.topk(2, dim=-1)
    torch.testing.assert_close(out.top_k_index, top.indices)
    torch.testing.assert_close(out.top_k_weight, top.values / top.values.sum(-1, keepdim=True))
    counts = torch.bincount(top.indices.reshape(-1), minlength=4).float() / 60
    balance = 4 * (counts * probs.mean(0)).sum()
    z = torch.logsumexp(router.linear(x), -1).square().mean()
    torch.testing.assert_close(out.aux_loss, 0.01 * balance + 0.001 * z)
    assert SoftmaxTopKRouter(8, 4, 2)(x).aux_loss.item() == 0.0


def test_switch_loss_is_one_when_uniform_and_e_when_collapsed():
    uniform = torch.full((8, 4), 0.25)
    spread = torch.arange(8).remainder(4)[:, None]
    assert switch_balance_loss(uniform, spread, 4).item() == pytest.approx(1.0)
    collapsed = torch.zeros(8, 4)
    collapsed[:, 0] = 1
    assert switch_balance_loss(collapsed, torch.zeros(8, 1, dtype=torch.long), 4).item() == pytest.approx(4.0)
    assert router_z_loss(torch.zeros(2, 4)).item() == pytest.approx(math.log(4) ** 2)


def test_router_argument_errors():
    with pytest.raises(ValueError, match="top_k=5 exceeds num_experts=4"):
        EigenbasisRouter(4, 5)
    with pytest.raises(ValueError, match="Did you mean 'softmax'"):
        EigenbasisRouter(4, 2, gate="sofmax")
    with pytest.raises(ValueError, match=r"route_threshold must lie in \[0, 1\]"):
        EigenbasisRouter(4, 2, route_threshold=1.5)
