from __future__ import annotations

import copy

import pytest
import torch

from ermoe_ba.layers import MoELayer, eigen_experts, qr_retract
from ermoe_ba.layers._projection import routed_projection
from ermoe_ba.layers.eigen_experts import retract


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
        full = torch.einsum("nd,edr->ner", x, v)
        p = routed_projection(x, v, full.detach(), index) if fast else full
        return (p.gather(1, gather) * weight).sum() + p.gather(1, gather).norm(dim=-1).sum()

    grads = []
    for fast in (False, True):
        x, v = tokens.clone().requires_grad_(), bases.clone().requires_grad_()
        loss(x, v, fast).backward()
        grads.append((x.grad, v.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-12, rtol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"gate": "softmax", "temperature": 0.5}, {"route_threshold": 0.4}, {"capacity_factor": 0.6}],
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
