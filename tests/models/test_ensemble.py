"""SeedEnsemble: the mean of its members, one member's routing, one architecture."""

from __future__ import annotations

import pytest
import torch

from ermoe_ba.models import SeedEnsemble
from ermoe_ba.models.config import ModelConfig
from ermoe_ba.models.transformer import MoETransformer

CFG = ModelConfig(img_size=(16, 16, 16), patch_size=8, embed_dim=16, depth=2, num_heads=2, num_experts=4)


def _members(n: int) -> list[MoETransformer]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(MoETransformer(CFG).eval())
    return out


def test_output_is_the_mean_of_the_members_and_routing_is_the_first_members():
    members = _members(3)
    ensemble = SeedEnsemble(members).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        out = ensemble(x, capture_routing=True)
        each = [m(x, capture_routing=True) for m in members]
    torch.testing.assert_close(out.output, sum(o.output for o in each) / 3)
    assert not torch.allclose(each[0].output, each[1].output)
    for block, layer in out.routing.layers.items():
        assert torch.equal(layer.top_k_index, each[0].routing.layers[block].top_k_index)
    assert ensemble(x).routing is None
    assert ensemble.config == CFG and ensemble.grid_size == (2, 2, 2)


def test_members_of_different_architectures_are_refused():
    other = MoETransformer(ModelConfig(img_size=(16, 16, 16), patch_size=8, embed_dim=32, depth=2, num_heads=2))
    with pytest.raises(ValueError, match="share one architecture"):
        SeedEnsemble([*_members(1), other])
    with pytest.raises(ValueError, match="at least one member"):
        SeedEnsemble([])
