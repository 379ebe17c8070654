from __future__ import annotations

import pytest
import torch
from torch import nn

from ermoe_ba.layers import Attention, Mlp


def _reference_attention(attn: Attention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = (attn.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)).unbind(0)
    logits = q @ k.transpose(-1, -2) / (d // h) ** 0.5
    if causal:
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return attn.proj(out)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_softmax_reference(causal):
    torch.manual_seed(0)
    attn = Attention(16, num_heads=4, causal=causal)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(attn(x), _reference_attention(attn, x, causal), atol=1e-5, rtol=1e-5)


def test_causal_output_ignores_future_tokens_but_bidirectional_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 9, 16)
    changed = x.clone()
    changed[:, 5:] = torch.randn(1, 4, 16)
    causal = Attention(16, num_heads=2, causal=True)
    torch.testing.assert_close(causal(x)[:, :5], causal(changed)[:, :5])
    assert not torch.allclose(causal(x)[:, 5:], causal(changed)[:, 5:])
    bidirectional = Attention(16, num_heads=2)
    bidirectional.load_state_dict(causal.state_dict())
    assert not torch.allclose(bidirectional(x)[:, :5], bidirectional(changed)[:, :5])


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="dim=10 is not divisible by num_heads=4"):
        Attention(10, num_heads=4)


def test_mlp_matches_manual_two_layer_perceptron_and_timm_names():
    torch.manual_seed(0)
    mlp = Mlp(6, hidden_features=11, out_features=4, act_layer=nn.ReLU)
    x = torch.randn(3, 5, 6)
    expected = torch.relu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
    torch.testing.assert_close(mlp(x), expected)
    assert {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"} == set(mlp.state_dict())
    assert Mlp(6).fc1.out_features == 6
