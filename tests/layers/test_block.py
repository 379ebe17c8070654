from __future__ import annotations

import functools

import pytest
import torch

from ermoe_ba.layers import Block, DropPath, MoELayer


@pytest.mark.parametrize("causal", [False, True])
def test_dense_block_is_prenorm_residual_composition(causal):
    torch.manual_seed(0)
    block = Block(16, num_heads=2, causal=causal).eval()
    x = torch.randn(2, 5, 16)
    out = block(x)
    h = x + block.attn(block.norm1(x))
    torch.testing.assert_close(out.output, h + block.mlp(block.norm2(h)))
    assert out.aux_loss.item() == 0.0 and out.routing is None


@pytest.mark.parametrize("router", ["ermoe", "softmax"])
def test_moe_block_returns_the_layer_routing_and_aux(router):
    torch.manual_seed(0)
    mlp_layer = functools.partial(MoELayer, num_experts=4, top_k=2, router=router, balance_loss_weight=0.01)
    block = Block(16, num_heads=2, mlp_ratio=2.0, mlp_layer=mlp_layer)
    x = torch.randn(3, 6, 16)
    out = block(x, capture_routing=True)
    h = x + block.attn(block.norm1(x))
    layer_out = block.mlp(block.norm2(h), capture_routing=True)
    torch.testing.assert_close(out.output, h + layer_out.output)
    torch.testing.assert_close(out.aux_loss, layer_out.aux_loss)
    assert out.routing.top_k_index.shape == (18, 2)
    assert (out.aux_loss.item() > 0) == (router == "softmax")
    assert block(x).routing is None


def test_drop_path_zeroes_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    drop = DropPath(0.5)
    x = torch.ones(4000, 3, 2)
    y = drop(x)
    per_sample = y.reshape(4000, -1)
    assert set(per_sample[:, 0].unique().tolist()) <= {0.0, 2.0}
    assert torch.all(per_sample == per_sample[:, :1])  # a sample is dropped entirely or kept entirely
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(drop.eval()(x), x)
