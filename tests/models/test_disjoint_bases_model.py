"""``disjoint_bases`` reaches every ERMoE layer: all experts' bases together are orthonormal."""

from __future__ import annotations

import torch
from einops import rearrange

from ermoe_ba.layers import EigenExperts
from ermoe_ba.models import create_model


def test_disjoint_bases_tile_an_orthonormal_frame_in_every_moe_layer():
    model = create_model("ermoe_ba_tiny", disjoint_bases=True, img_size=(32, 32, 32), patch_size=16)
    banks = [m for m in model.modules() if isinstance(m, EigenExperts)]
    assert banks and all(b.disjoint_bases for b in banks)
    for bank in banks:
        v = rearrange(bank.bases()[0], "e d r -> d (e r)")  # (96, 8 * 12)
        torch.testing.assert_close(v.T @ v, torch.eye(v.shape[1]), atol=1e-5, rtol=0)
    plain = create_model("ermoe_ba_tiny", img_size=(32, 32, 32), patch_size=16)
    v = rearrange(next(m for m in plain.modules() if isinstance(m, EigenExperts)).bases()[0], "e d r -> d (e r)")
    assert (v.T @ v - torch.eye(v.shape[1])).abs().max() > 0.1  # independent bases overlap
    assert create_model("ermoe_ba_tiny", disjoint_bases=True, router="softmax").config.router == "softmax"
