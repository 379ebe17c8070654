"""ModelEnsemble: the mean of its members, one member's routing, one input grid."""

from __future__ import annotations

import pytest
import torch

from ermoe_ba.models import ModelEnsemble
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
    ensemble = ModelEnsemble(members).eval()
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


def test_a_binned_member_contributes_its_predicted_value():
    torch.manual_seed(5)
    binned = MoETransformer(ModelConfig(**{**CFG.to_dict(), "output_bins": 12})).eval()
    plain = _members(1)[0]
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        out = ModelEnsemble([plain, binned]).eval()(x).output
        expected = (plain(x).output[:, :1] + binned(x).output[:, :1]) / 2  # not the bins' log-probabilities
    assert binned(x).output.shape == (2, 13) and out.shape == (2, 1)
    torch.testing.assert_close(out, expected)


def test_members_may_differ_in_architecture_but_not_in_input_grid():
    other_stem = MoETransformer(ModelConfig(**{**CFG.to_dict(), "stem": "conv_pool", "stem_width": 4})).eval()
    ensemble = ModelEnsemble([*_members(1), other_stem]).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ensemble(x).output, (ensemble.members[0](x).output + other_stem(x).output) / 2)
    assert ensemble.config == CFG  # the first member's
    other_grid = MoETransformer(ModelConfig(img_size=(32, 16, 16), patch_size=8, embed_dim=16, depth=2, num_heads=2))
    with pytest.raises(ValueError, match="share one input grid"):
        ModelEnsemble([*_members(1), other_grid])
    with pytest.raises(ValueError, match="at least one member"):
        ModelEnsemble([])
