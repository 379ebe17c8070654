from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from ermoe_ba.layers import Block, EigenbasisRouter, MoELayer, token_norms


def _context_layer(**kwargs) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(12, 20, num_experts=4, top_k=2, score="context", **kwargs)


def test_context_scores_by_hand():
    # d = 4, expert 0 spans e1, e2 and expert 1 spans e3, e4
    router = EigenbasisRouter(num_experts=2, top_k=1, score="context")
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    c = torch.tensor([[1.0, 1.0, 0.0, -1.0]])
    proj = torch.stack([x[:, :2], x[:, 2:]], 1)  # (1, 2, 2): V_0^T x = (1, 0), V_1^T x = (1, 0)
    ctx = torch.stack([c[:, :2], c[:, 2:]], 1)  # V_0^T c = (1, 1), V_1^T c = (0, -1)
    out = router(proj, token_norms(x), ctx)
    # expert 0: cos((1, 0), (1, 1)) = 1/sqrt(2); expert 1: cos((1, 0), (0, -1)) = 0
    torch.testing.assert_close(out.scores, torch.tensor([[1 / math.sqrt(2), 0.0]]))
    assert out.top_k_index.tolist() == [[0]] and out.top_k_weight.tolist() == [[1.0]]


def test_context_equal_to_the_token_scores_one_and_gates_split_evenly():
    layer = _context_layer()
    x = torch.randn(30, 12)
    routing = layer(x, capture_routing=True, context=x).routing
    torch.testing.assert_close(routing.scores, torch.ones(30, 4))  # cos(V_e^T x, V_e^T x) = 1
    torch.testing.assert_close(routing.top_k_weight, torch.full((30, 2), 0.5))
    opposite = layer(x, capture_routing=True, context=-2 * x).routing  # cos = -1 everywhere
    torch.testing.assert_close(opposite.scores, torch.zeros(30, 4))
    torch.testing.assert_close(opposite.top_k_weight, torch.full((30, 2), 0.5))


def test_context_scores_are_the_clipped_cosines_and_rank_the_experts():
    layer = _context_layer()
    x, c = torch.randn(50, 12), torch.randn(50, 12)
    routing = layer(x, capture_routing=True, context=c).routing
    v = layer.experts.bases()[0].detach()
    px, pc = torch.einsum("nd,edr->ner", x, v), torch.einsum("nd,edr->ner", c, v)
    cosine = torch.nn.functional.cosine_similarity(px, pc, dim=-1)
    torch.testing.assert_close(routing.scores, cosine.clamp(0, 1), atol=1e-5, rtol=1e-5)
    assert float(routing.scores.min()) >= 0.0 and float(routing.scores.max()) <= 1.0
    assert float(cosine.min()) < 0  # the clip is exercised
    assert torch.equal(routing.top_k_index, cosine.topk(2, dim=-1).indices)


@pytest.mark.parametrize("dispatch", ["eager", "sorted"])
def test_zero_context_or_token_gives_finite_outputs_and_gradients(dispatch):
    layer = _context_layer(dispatch=dispatch)
    x = torch.randn(6, 12)
    x[0] = 0.0
    x.requires_grad_()
    c = torch.randn(6, 12)
    c[1] = 0.0
    c.requires_grad_()
    out = layer(x, capture_routing=True, context=c)
    out.output.sum().backward()
    assert torch.isfinite(out.output).all() and torch.isfinite(x.grad).all() and torch.isfinite(c.grad).all()
    assert out.routing.scores[:2].abs().max() == 0  # zero token / zero context: score 0, not NaN
    torch.testing.assert_close(out.routing.top_k_weight[:2], torch.full((2, 2), 0.5))


@pytest.mark.parametrize("kwargs", [{}, {"gate": "softmax"}, {"capacity_factor": 0.7}])
def test_context_score_sorted_equals_eager_in_outputs_and_gradients(kwargs):
    reference = _context_layer(dispatch="eager", **kwargs)
    fast = copy.deepcopy(reference)
    fast.dispatch_name, fast.dispatch_fn = "sorted", MoELayer(4, 4, 2, 1).dispatch_fn
    x, c, weight = torch.randn(40, 12), torch.randn(40, 12), torch.randn(40, 12)
    results = []
    for layer in (reference, fast):
        xi, ci = x.clone().requires_grad_(), c.clone().requires_grad_()
        out = layer(xi, context=ci).output
        (out * weight).sum().backward()
        results.append((out, xi.grad, ci.grad, {n: p.grad for n, p in layer.named_parameters()}))
    for got, want in zip(results[1][:3], results[0][:3], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert float(results[0][2].abs().sum()) > 0  # the gates really depend on the context
    for name, grad in results[0][3].items():
        torch.testing.assert_close(results[1][3][name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_missing_context_raises_and_bad_score_suggests():
    with pytest.raises(ValueError, match="needs context="):
        _context_layer()(torch.randn(3, 12))
    with pytest.raises(ValueError, match="Did you mean 'context'"):
        MoELayer(12, 20, num_experts=4, score="contxt")


def test_block_routes_on_its_attention_output():
    torch.manual_seed(1)
    block = Block(12, num_heads=2, mlp_layer=functools.partial(MoELayer, num_experts=4, top_k=2, score="context"))
    x = torch.randn(2, 5, 12)
    routing = block(x, capture_routing=True).routing
    context = block.attn(block.norm1(x))
    tokens = block.norm2(x + context)
    expected = block.mlp(tokens, capture_routing=True, context=context).routing
    torch.testing.assert_close(routing.scores, expected.scores)
    v = block.mlp.experts.bases()[0]
    px = torch.einsum("nd,edr->ner", tokens.reshape(10, 12), v)
    pc = torch.einsum("nd,edr->ner", context.reshape(10, 12), v)
    cosine = torch.nn.functional.cosine_similarity(px, pc, dim=-1).clamp(0, 1)
    torch.testing.assert_close(routing.scores, cosine, atol=1e-5, rtol=1e-5)
