from __future__ import annotations

import io

import pytest
import torch
from einops import rearrange

from ermoe_ba.layers import EigenExperts, MoELayer, orthonormalize_, qr_retract

MODES = ["qr", "parametrization"]


def _max_gram_error(basis: torch.Tensor) -> float:
    eye = torch.eye(basis.shape[-1], dtype=basis.dtype)
    return float((basis.mT @ basis - eye).abs().max().detach())


def _train_adamw(layer: MoELayer, steps: int = 20) -> None:
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1.0)
    for step in range(steps):
        torch.manual_seed(step)
        out = layer(torch.randn(64, layer.dim))
        loss = out.output.square().mean() + out.output.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("disjoint", [False, True])
def test_bases_orthonormal_after_adamw_lr_one(mode, disjoint):
    torch.manual_seed(0)
    layer = MoELayer(32, 40, num_experts=4, top_k=2, disjoint_bases=disjoint)
    layer.experts = EigenExperts(4, 32, 40, disjoint_bases=disjoint, orthogonalization=mode)
    raw_before = layer.experts.state_dict()["U"].clone()
    _train_adamw(layer)
    v, u = layer.experts.bases()
    assert not torch.allclose(u, raw_before, atol=1e-2)  # the steps really moved the bases
    assert _max_gram_error(v) < 1e-4
    assert _max_gram_error(u) < 1e-4
    if disjoint:
        assert _max_gram_error(rearrange(v, "e d r -> d (e r)")) < 1e-4


@pytest.mark.parametrize("save_mode", MODES)
@pytest.mark.parametrize("load_mode", MODES)
def test_saved_state_dict_holds_orthonormal_bases_and_reloads_them(save_mode, load_mode):
    torch.manual_seed(1)
    layer = MoELayer(32, 40, num_experts=4, top_k=2)
    layer.experts = EigenExperts(4, 32, 40, orthogonalization=save_mode)
    _train_adamw(layer)
    if save_mode == "qr":  # raw parameters drifted off the manifold; the file must not
        assert _max_gram_error(layer.experts.V.detach()) > 1e-2
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert _max_gram_error(state["experts.V"]) < 1e-4
    assert _max_gram_error(state["experts.U"]) < 1e-4
    assert not any("parametrizations" in key for key in state)

    fresh = MoELayer(32, 40, num_experts=4, top_k=2)
    fresh.experts = EigenExperts(4, 32, 40, orthogonalization=load_mode)
    fresh.load_state_dict(state)
    v, u = fresh.experts.bases()
    assert _max_gram_error(v) < 1e-4 and _max_gram_error(u) < 1e-4
    x = torch.randn(20, 32)
    torch.testing.assert_close(fresh(x).output, layer(x).output, atol=1e-5, rtol=1e-4)


def test_orthonormalize_in_place_keeps_the_function():
    torch.manual_seed(2)
    layer = MoELayer(16, 24, num_experts=4, top_k=2)
    _train_adamw(layer, steps=3)
    x = torch.randn(10, 16)
    before = layer(x).output
    assert orthonormalize_(layer) == 1
    assert _max_gram_error(layer.experts.V.detach()) < 1e-5
    torch.testing.assert_close(layer(x).output, before, atol=1e-5, rtol=1e-4)


def test_qr_retract_is_idempotent_with_positive_r_diagonal():
    q = qr_retract(torch.randn(3, 10, 4))
    torch.testing.assert_close(qr_retract(q), q, atol=1e-6, rtol=0)
    r = q.mT @ torch.randn(3, 10, 4)
    assert _max_gram_error(q) < 1e-5 and r.shape == (3, 4, 4)


def test_project_is_v_transpose_x_per_expert():
    torch.manual_seed(0)
    experts = EigenExperts(4, 16, 20, expert_rank=3)
    v, _ = experts.bases()
    x = torch.randn(7, 16)
    expected = torch.stack([x @ v[e] for e in range(4)], dim=1)
    torch.testing.assert_close(experts.project(x, v), expected)


def test_forward_expert_is_eigen_form_computed_by_hand():
    torch.manual_seed(0)
    experts = EigenExperts(3, 8, 10, expert_rank=2)
    v, u = experts.bases()
    x = torch.randn(5, 8)
    for e in range(3):
        w1 = u[e] @ torch.diag(experts.log_s[e].exp()) @ v[e].T  # (h, d), rank 2
        assert torch.linalg.matrix_rank(w1) == 2
        expected = torch.nn.functional.gelu(x @ w1.T + experts.b1[e]) @ experts.W2[e] + experts.b2[e]
        torch.testing.assert_close(experts.forward_expert(e, x), expected, atol=1e-5, rtol=1e-5)


def test_default_rank_and_rank_validation():
    assert EigenExperts(8, 64, 32).expert_rank == 8
    assert EigenExperts(100, 64, 32).expert_rank == 1
    with pytest.raises(ValueError, match=r"expert_rank=64 must be smaller than dim=64.*score.*is 1.*collapses"):
        EigenExperts(4, 64, 80, expert_rank=64)
    with pytest.raises(ValueError, match="routing collapses"):
        MoELayer(16, 32, num_experts=2, expert_rank=20)
    with pytest.raises(ValueError, match="disjoint_bases=True needs"):
        EigenExperts(4, 16, 32, expert_rank=5, disjoint_bases=True)
    with pytest.raises(ValueError, match=r"Did you mean 'qr'"):
        EigenExperts(4, 16, 32, orthogonalization="qrr")


def test_orthogonality_penalty_enters_aux_loss_only_when_weighted():
    torch.manual_seed(0)
    plain = MoELayer(16, 24, num_experts=4, top_k=2)
    weighted = MoELayer(16, 24, num_experts=4, top_k=2, orthogonality_weight=0.5)
    weighted.load_state_dict(plain.state_dict())
    with torch.no_grad():
        weighted.experts.V.mul_(2.0)  # raw gram = 4 I: penalty = 9 per diagonal entry
    x = torch.randn(5, 16)
    assert plain(x).aux_loss.item() == 0.0
    e, r = 4, weighted.experts.expert_rank
    assert weighted(x).aux_loss.item() == pytest.approx(0.5 * 9 * e * r, rel=1e-4)
