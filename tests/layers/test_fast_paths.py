from __future__ import annotations

import copy

import pytest
import torch

from ermoe_ba.layers import MoELayer, eager_dispatch, eigen_experts, qr_retract, sorted_dispatch
from ermoe_ba.layers._projection import routed_projection
from ermoe_ba.layers.eigen_experts import orthonormal_factor, retract
from ermoe_ba.layers.experts import ExpertWeights


@pytest.mark.parametrize("shape", [(3, 9, 4), (6, 6), (2, 40, 1)])
def test_retract_skips_qr_at_an_orthonormal_point_with_the_same_value_and_gradient(shape):
    torch.manual_seed(0)
    point = qr_retract(torch.randn(*shape, dtype=torch.float64))
    grad = torch.randn_like(point)
    fast, reference = point.clone().requires_grad_(), point.clone().requires_grad_()
    out = retract(fast)
    assert type(out.grad_fn).__name__ == "_AtOrthonormalPointBackward"  # no factorisation
    out.backward(grad)
    qr_retract(reference).backward(grad)
    torch.testing.assert_close(out.detach(), qr_retract(point), atol=1e-12, rtol=0)
    torch.testing.assert_close(fast.grad, reference.grad, atol=1e-10, rtol=0)


def test_retract_off_the_manifold_is_the_qr_retraction():
    torch.manual_seed(1)
    raw = qr_retract(torch.randn(3, 9, 4)) + 1e-3 * torch.randn(3, 9, 4)
    torch.testing.assert_close(retract(raw), qr_retract(raw), atol=0, rtol=0)


def test_routed_projection_backward_equals_autograd_through_the_selected_blocks():
    torch.manual_seed(2)
    n, d, e, r, k = 50, 12, 5, 2, 2
    tokens = torch.randn(n, d, dtype=torch.float64)
    bases = torch.randn(e, d, r, dtype=torch.float64)
    index = torch.rand(n, e).topk(k, dim=-1).indices
    weight = torch.randn(n, k, r, dtype=torch.float64)
    gather = index.unsqueeze(-1).expand(n, k, r)

    def loss(x, v, fast):
        selected = torch.einsum("nd,edr->ner", x, v).gather(1, gather)  # (n, k, r), plain autograd
        p = routed_projection(x, v, selected.detach(), index) if fast else selected
        return (p * weight).sum() + p.norm(dim=-1).sum()

    grads = []
    for fast in (False, True):
        x, v = tokens.clone().requires_grad_(), bases.clone().requires_grad_()
        loss(x, v, fast).backward()
        grads.append((x.grad, v.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-12, rtol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"gate": "softmax", "temperature": 0.5},
        {"route_threshold": 0.4},
        {"capacity_factor": 0.6},
        {"score": "centered"},
        {"score": "centered", "gate": "softmax"},
        {"score": "whitened"},
        {"score": "whitened", "gate": "softmax"},
    ],
)
def test_fast_ermoe_path_equals_the_eager_reference_after_an_optimizer_step(kwargs, monkeypatch):
    """Reference: eager dispatch, plain autograd projection, real QR; fast: sorted, routed, no QR."""
    torch.manual_seed(3)
    reference = MoELayer(12, 20, num_experts=4, top_k=2, dispatch="eager", **kwargs)
    fast = copy.deepcopy(reference)
    fast.dispatch_name, fast.dispatch_fn = "sorted", MoELayer(4, 4, 2, 1).dispatch_fn
    for layer in (reference, fast):  # one real step: raw bases leave the manifold, then retract
        optimizer = torch.optim.AdamW(layer.parameters(), lr=0.5)
        layer(torch.randn(30, 12, generator=torch.Generator().manual_seed(4))).output.sum().backward()
        optimizer.step()
    reference.experts.orthonormalize_()
    fast.experts.orthonormalize_()
    x, weight = torch.randn(40, 12), torch.randn(40, 12)
    outs = []
    for layer in (reference, fast):
        with monkeypatch.context() as patch:
            if layer is reference:
                patch.setattr(eigen_experts, "retract", qr_retract)
            layer.zero_grad()
            xi = x.clone().requires_grad_()
            out = layer(xi).output
            (out * weight).sum().backward()
        outs.append((out, xi.grad, {n: p.grad for n, p in layer.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-5)
    for name, grad in outs[0][2].items():
        torch.testing.assert_close(outs[1][2][name], grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 0.3, 3.0])
def test_orthonormal_factor_is_the_qr_retraction_near_and_far_from_the_manifold(scale):
    """Cholesky QR near the manifold, Householder fallback far from it: the same Q either way."""
    torch.manual_seed(5)
    raw = qr_retract(torch.randn(4, 60, 8)) + scale * torch.randn(4, 60, 8) / 8
    q = orthonormal_factor(raw)
    torch.testing.assert_close(q, qr_retract(raw), atol=2e-6, rtol=0)
    gram = q.mT @ q
    torch.testing.assert_close(gram, torch.eye(8).expand_as(gram), atol=4e-6, rtol=0)
    assert orthonormal_factor(q) is None  # already orthonormal: nothing to do


@pytest.mark.parametrize(("scale", "cholesky"), [(1e-3, True), (2e-2, True), (0.3, False)])
def test_orthonormal_factor_is_orthonormal_to_the_tolerance_bases_tests(scale, cholesky):
    """One Cholesky-QR pass up to max|BᵀB - I| = 1/2 lands within bases()' tolerance; beyond: Householder."""
    torch.manual_seed(6)
    point = qr_retract(torch.randn(3, 200, 16))
    raw = point + scale * torch.randn_like(point)
    assert (float((raw.mT @ raw - torch.eye(16)).abs().max()) < 0.5) is cholesky  # the intended branch
    q = orthonormal_factor(raw)
    assert eigen_experts._is_orthonormal(q)  # bases() will use it as it is
    torch.testing.assert_close(q, qr_retract(raw), atol=2e-6, rtol=0)
    assert torch.equal(q, qr_retract(raw)) is not cholesky


def test_orthonormal_factor_of_a_rank_deficient_matrix_falls_back_to_householder():
    raw = torch.randn(2, 10, 3, dtype=torch.float64)
    raw[:, :, 2] = raw[:, :, 0]  # singular Gram matrix: Cholesky fails
    torch.testing.assert_close(orthonormal_factor(raw), qr_retract(raw), atol=0, rtol=0)


@pytest.mark.parametrize("backend", [eager_dispatch, sorted_dispatch])
@pytest.mark.parametrize("capacity", [False, True])
def test_slot_inputs_equal_per_expert_inputs(backend, capacity):
    """Each slot reading its own row of (n, k, i) equals each expert reading its row of (n, e, i)."""
    torch.manual_seed(6)
    n, e, k, i, h, d = 30, 5, 2, 4, 6, 3
    per_expert = torch.randn(n, e, i, dtype=torch.float64)
    index = torch.rand(n, e).topk(k, dim=-1).indices
    per_slot = per_expert.gather(1, index.unsqueeze(-1).expand(n, k, i))
    gate = torch.rand(n, k, dtype=torch.float64)
    shapes = ((e, i, h), (e, h), (e, h, d), (e, d))
    weights = ExpertWeights(*(torch.randn(*shape, dtype=torch.float64) for shape in shapes))
    keep = torch.rand(n, k) > 0.3 if capacity else None
    act = torch.nn.GELU()
    expected = eager_dispatch(per_expert, index, gate, weights, act, keep)
    got = backend(per_slot, index, gate, weights, act, keep, slot_inputs=True)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
