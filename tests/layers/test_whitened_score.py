"""ERMoE ``score="whitened"``: the subspace score of ``W (x - m)``, ``W`` from running token statistics."""

from __future__ import annotations

import pytest
import torch

from ermoe_ba.layers import MoELayer
from ermoe_ba.layers.moe import CENTER_MOMENTUM, WHITEN_SHRINKAGE
from ermoe_ba.routing.metrics import load_metrics


def _layer(**kwargs) -> MoELayer:
    torch.manual_seed(0)
    return MoELayer(12, 20, num_experts=4, top_k=2, score="whitened", **kwargs)


def _shrunk_inverse_sqrt(cov: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(cov)
    values = (1 - WHITEN_SHRINKAGE) * values + WHITEN_SHRINKAGE * values.mean()
    return vectors @ torch.diag(values.rsqrt()) @ vectors.T


def test_training_forward_updates_mean_and_covariance_and_eval_leaves_them():
    layer = _layer()
    x = torch.randn(200, 12) * torch.linspace(0.5, 3, 12) + 1.0
    layer(x)
    torch.testing.assert_close(layer.token_mean, CENTER_MOMENTUM * x.mean(0))
    expected = (1 - CENTER_MOMENTUM) * torch.eye(12) + CENTER_MOMENTUM * torch.cov(x.T)
    torch.testing.assert_close(layer.token_cov, expected, atol=1e-5, rtol=1e-5)
    before = layer.token_cov.clone()
    layer.eval()
    layer(torch.randn(7, 12))
    assert torch.equal(layer.token_cov, before)


@pytest.mark.parametrize("dispatch", ["eager", "sorted"])
def test_scores_are_subspace_scores_of_whitened_tokens_and_experts_read_the_raw_tokens(dispatch):
    layer = _layer(dispatch=dispatch).eval()
    a = torch.randn(12, 12)
    cov, mean = a @ a.T / 12 + 0.1 * torch.eye(12), torch.randn(12)
    layer.token_cov.copy_(cov)
    layer.token_mean.copy_(mean)
    x = torch.randn(40, 12) @ a.T + mean
    out = layer(x, capture_routing=True)
    v = layer.experts.bases()[0].detach()
    z = (x - mean) @ _shrunk_inverse_sqrt(cov)
    expected = torch.einsum("nd,edr->ner", z, v).norm(dim=-1) / z.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out.routing.scores, expected, atol=1e-4, rtol=1e-4)
    # the experts: the same routing and gates applied to V_e^T x, expert by expert
    manual = torch.zeros_like(x)
    for slot in range(2):
        for t in range(40):
            e = int(out.routing.top_k_index[t, slot])
            manual[t] += out.routing.top_k_weight[t, slot] * layer.experts.forward_expert(e, x[t : t + 1])[0]
    torch.testing.assert_close(out.output, manual.detach(), atol=1e-4, rtol=1e-4)


def test_with_identity_statistics_it_is_the_plain_layer():
    layer = _layer().eval()  # fresh buffers: mean 0, covariance I, so W = I
    plain = MoELayer(12, 20, num_experts=4, top_k=2).eval()
    plain.experts.load_state_dict(layer.experts.state_dict())
    x = torch.randn(30, 12)
    torch.testing.assert_close(layer(x).output, plain(x).output)


def test_tokens_stretched_along_one_experts_basis_are_spread_over_all_experts():
    torch.manual_seed(1)
    layer = MoELayer(12, 20, num_experts=4, top_k=1, score="whitened", disjoint_bases=True).eval()
    v0 = layer.experts.bases()[0][0].detach()  # (12, 3): expert 0's basis
    x = torch.randn(4000, 12) + 2 * torch.randn(4000, 3) @ v0.T  # 5x the variance inside expert 0's subspace
    plain = MoELayer(12, 20, num_experts=4, top_k=1, disjoint_bases=True).eval()
    plain.experts.load_state_dict(layer.experts.state_dict())
    layer.token_mean.copy_(x.mean(0))
    layer.token_cov.copy_(torch.cov(x.T))
    crowded = load_metrics(plain(x, capture_routing=True).routing.top_k_index, 4)
    spread = load_metrics(layer(x, capture_routing=True).routing.top_k_index, 4)
    assert crowded["max_over_mean"] > 3.0  # about 80 % of the tokens pick expert 0
    # the shrinkage keeps a little of the stretch (it grows with it: CV 0.24 at 10x the variance)
    assert spread["cv"] < 0.2 and spread["max_over_mean"] < 1.3


def test_statistics_are_saved_and_loaded_with_the_layer():
    layer = _layer()
    layer(torch.randn(50, 12) * 2 + 1.0)
    copy = _layer()
    copy.load_state_dict(layer.state_dict())
    assert torch.equal(copy.token_cov, layer.token_cov) and torch.equal(copy.token_mean, layer.token_mean)
