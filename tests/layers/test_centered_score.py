"""ERMoE ``score="centered"``: the subspace score of ``x - m`` with ``m`` the running token mean."""

from __future__ import annotations

import pytest
import torch

from ermoe_ba.layers import MoELayer
from ermoe_ba.layers.moe import CENTER_MOMENTUM


def _layer(**kwargs) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(12, 20, num_experts=4, top_k=2, score="centered", **kwargs)


def test_training_forward_moves_the_running_mean_and_eval_leaves_it():
    layer = _layer()
    x = torch.randn(50, 12) + torch.linspace(-2, 2, 12)
    layer(x)
    torch.testing.assert_close(layer.token_mean, CENTER_MOMENTUM * x.mean(0))
    layer(x)
    torch.testing.assert_close(layer.token_mean, (1 - (1 - CENTER_MOMENTUM) ** 2) * x.mean(0))
    before = layer.token_mean.clone()
    layer.eval()
    layer(torch.randn(7, 12))
    assert torch.equal(layer.token_mean, before)


@pytest.mark.parametrize("dispatch", ["eager", "sorted"])
def test_scores_are_the_subspace_scores_of_the_centred_tokens(dispatch):
    layer = _layer(dispatch=dispatch).eval()
    mean = torch.randn(12)
    layer.token_mean.copy_(mean)
    x = torch.randn(40, 12) + 3 * mean
    routing = layer(x, capture_routing=True).routing
    v = layer.experts.bases()[0].detach()
    centred = x - mean
    expected = torch.einsum("nd,edr->ner", centred, v).norm(dim=-1) / centred.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(routing.scores, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(routing.top_k_index, expected.topk(2, dim=-1).indices)
    # default gates: ||V_e^T (x - m)|| normalised over the two picks
    picked = expected.gather(1, routing.top_k_index)
    torch.testing.assert_close(routing.top_k_weight, picked / picked.sum(-1, keepdim=True), atol=1e-5, rtol=1e-5)


def test_routing_follows_a_shift_of_all_tokens_and_their_mean_but_the_plain_score_does_not():
    layer = _layer().eval()
    x, shift = torch.randn(60, 12), 4 * torch.randn(12)
    layer.token_mean.copy_(x.mean(0))
    before = layer(x, capture_routing=True).routing
    layer.token_mean.copy_(x.mean(0) + shift)
    after = layer(x + shift, capture_routing=True).routing
    assert torch.equal(before.top_k_index, after.top_k_index)
    torch.testing.assert_close(before.scores, after.scores, atol=1e-5, rtol=1e-5)
    plain = MoELayer(12, 20, num_experts=4, top_k=2).eval()
    plain.experts.load_state_dict(layer.experts.state_dict())
    moved = plain(x + shift, capture_routing=True).routing.top_k_index
    assert not torch.equal(plain(x, capture_routing=True).routing.top_k_index, moved)


@pytest.mark.parametrize("dispatch", ["eager", "sorted"])
def test_a_token_equal_to_the_mean_gets_k_experts_and_finite_gradients(dispatch):
    layer = _layer(dispatch=dispatch).eval()
    x = torch.randn(6, 12)
    layer.token_mean.copy_(x[0])
    x.requires_grad_()
    out = layer(x, capture_routing=True)
    out.output.sum().backward()
    assert torch.isfinite(out.output).all() and torch.isfinite(x.grad).all()
    assert out.routing.scores[0].eq(0).all() and out.routing.top_k_index.shape == (6, 2)
    torch.testing.assert_close(out.routing.top_k_weight[0], torch.full((2,), 0.5))


def test_running_mean_is_saved_and_loaded_with_the_layer():
    layer = _layer()
    layer(torch.randn(20, 12) + 1.0)
    copy = _layer()
    copy.load_state_dict(layer.state_dict())
    assert torch.equal(copy.token_mean, layer.token_mean) and layer.token_mean.abs().sum() > 0
    x = torch.randn(9, 12)
    torch.testing.assert_close(copy.eval()(x).output, layer.eval()(x).output)
