from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ermoe_ba.layers import (
    MoELayer,
    available_dispatch,
    capacity_keep_mask,
    get_dispatch,
    register_dispatch,
)

FAST = [name for name in available_dispatch() if name != "eager"]
CASES = [(3, 8, 2), (40, 4, 1), (64, 6, 2), (33, 5, 3), (17, 16, 4)]  # (n, e, k)


def _pair(router: str, e: int, k: int, fast: str, dim: int = 12, **kwargs):
    torch.manual_seed(e * 10 + k)
    reference = MoELayer(dim, 20, num_experts=e, top_k=k, router=router, dispatch="eager", **kwargs)
    other = copy.deepcopy(reference)
    other.dispatch_fn = get_dispatch(fast)
    return reference, other


def _run(layer: MoELayer, x: torch.Tensor, weight: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = layer(x, capture_routing=True)
    (out.output * weight).sum().backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return out, x.grad, grads


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize("router", ["ermoe", "softmax"])
@pytest.mark.parametrize(("n", "e", "k"), CASES)
def test_fast_backends_equal_eager_in_outputs_and_gradients(fast, router, n, e, k):
    reference, other = _pair(router, e, k, fast)
    x, weight = torch.randn(n, 12), torch.randn(n, 12)
    ref_out, ref_dx, ref_grads = _run(reference, x, weight)
    out, dx, grads = _run(other, x, weight)
    torch.testing.assert_close(out.output, ref_out.output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, ref_dx, atol=1e-5, rtol=1e-5)
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        assert grads[name] is not None, name
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    if (n, e, k) == (3, 8, 2):  # only 6 slots for 8 experts: some experts are idle
        assert len(torch.unique(out.routing.top_k_index)) < e


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize(("router", "kwargs"), [("ermoe", {"expert_rank": 8}), ("softmax", {})])
def test_fast_backends_equal_eager_when_expert_inputs_need_no_padding(fast, router, kwargs):
    """Expert input width 16 (softmax) or 8 (ERMoE rank): the sorted kernel adds fc1's bias by addmm."""
    reference, other = _pair(router, 4, 2, fast, dim=16, **kwargs)
    with torch.no_grad():  # nonzero biases, so a bias left out shows
        for layer in (reference, other):
            layer.experts.b1.copy_(torch.linspace(-1, 1, layer.experts.b1.numel()).view_as(layer.experts.b1))
    x, weight = torch.randn(30, 16), torch.randn(30, 16)
    ref_out, ref_dx, ref_grads = _run(reference, x, weight)
    out, dx, grads = _run(other, x, weight)
    torch.testing.assert_close(out.output, ref_out.output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, ref_dx, atol=1e-5, rtol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("fast", FAST)
@pytest.mark.parametrize("router", ["ermoe", "softmax"])
def test_capacity_limit_drops_the_same_slots_in_every_backend(fast, router):
    reference, other = _pair(router, 4, 2, fast, capacity_factor=0.5)
    x, weight = torch.randn(50, 12), torch.randn(50, 12)
    ref_out, ref_dx, _ = _run(reference, x, weight)
    out, dx, _ = _run(other, x, weight)
    counts = torch.bincount(ref_out.routing.top_k_index.reshape(-1), minlength=4)
    expected_dropped = int((counts - 13).clamp_min(0).sum())  # capacity ceil(0.5 * 100 / 4) = 13
    assert out.routing.dropped == ref_out.routing.dropped == expected_dropped > 0
    torch.testing.assert_close(out.output, ref_out.output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, ref_dx, atol=1e-5, rtol=1e-5)


def test_capacity_keep_mask_priority_and_count():
    index = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    keep, dropped = capacity_keep_mask(index, num_experts=3, capacity_factor=0.75)  # capacity 2
    # expert 0: first choices of tokens 0, 1 fit, token 2's first and token 3's second do not;
    # expert 1: token 3's first choice, then token 0's second; token 2's second is dropped
    assert keep.tolist() == [[True, True], [True, True], [False, False], [True, False]]
    assert dropped == 3
    assert capacity_keep_mask(index, 3, 10.0)[1] == 0


@pytest.mark.parametrize("act_layer", [nn.SiLU, nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid])
def test_sorted_backward_passes_float64_gradcheck(act_layer):
    """Hidden width 7 is padded to 16 inside the kernel; Sigmoid(0) != 0 checks the padding stays inert."""
    torch.manual_seed(0)
    layer = MoELayer(6, 7, num_experts=3, top_k=2, act_layer=act_layer, dispatch="sorted").double()
    x = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    params = [layer.experts.V, layer.experts.U, layer.experts.log_s, layer.experts.W2, layer.experts.b1]

    assert torch.autograd.gradcheck(lambda x: layer(x).output, (x,), atol=1e-6)
    for p in params:
        p.grad = None
    out = layer(x).output
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    for p in params:  # directional derivative of every parameter against central differences
        direction = torch.randn_like(p)
        with torch.no_grad():
            p.add_(1e-6 * direction)
            plus = (layer(x).output * weight).sum()
            p.sub_(2e-6 * direction)
            minus = (layer(x).output * weight).sum()
            p.add_(1e-6 * direction)
        numeric = (plus - minus) / 2e-6
        assert float((p.grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-5, abs=1e-7)


def test_registry_errors():
    with pytest.raises(ValueError, match="Did you mean 'sorted'"):
        get_dispatch("sortd")
    with pytest.raises(ValueError, match="already registered"):
        register_dispatch("eager")(lambda *args: None)
    with pytest.raises(ValueError, match="Did you mean 'eager'"):
        MoELayer(8, 8, num_experts=2, dispatch="eagr")
