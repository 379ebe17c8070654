"""``pool="flatten"``: the head reads every patch token at its own position."""

from __future__ import annotations

import pytest
import torch

from ermoe_ba.models import create_model
from ermoe_ba.models.config import ModelConfig
from ermoe_ba.models.transformer import MoETransformer
from ermoe_ba.training.checkpoint import build_meta, load_checkpoint, save_checkpoint

SMALL = dict(img_size=(32, 48, 32), patch_size=16, embed_dim=32, depth=2, num_heads=2, num_experts=4, top_k=2)


def test_flatten_head_is_a_per_position_linear_map_of_the_tokens():
    torch.manual_seed(0)
    model = MoETransformer(ModelConfig(pool="flatten", **SMALL)).eval()
    x = torch.randn(3, 1, 32, 48, 32)
    tokens = model.forward_features(x).tokens  # (3, 12, 32)
    assert model.head.in_features == 12 * 32
    per_position = model.head.weight.view(12, 32)  # row t: the weights of token t
    expected = torch.einsum("btd,td->b", tokens, per_position) + model.head.bias
    torch.testing.assert_close(model(x).output[:, 0], expected)


def test_flatten_readout_tells_positions_apart_and_mean_does_not():
    torch.manual_seed(0)
    tokens = torch.randn(2, 12, 32)
    swapped = tokens[:, torch.randperm(12)]
    for pool, order_matters in (("mean", False), ("flatten", True)):
        model = MoETransformer(ModelConfig(pool=pool, **SMALL)).eval()
        a, b = model.forward_head(model.pool(tokens)), model.forward_head(model.pool(swapped))
        assert torch.allclose(a, b, atol=1e-5) is not order_matters, pool


def test_flatten_model_trains_and_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("ermoe_ba_tiny", pool="flatten")
    assert model.head.in_features == model.patch_embed.num_patches * model.config.embed_dim
    x = torch.randn(2, 1, 80, 96, 80)
    model(x).output.sum().backward()
    assert model.head.weight.grad.abs().sum() > 0
    meta = build_meta(model, "ermoe_ba_tiny", model_overrides={"pool": "flatten"})
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "flatten.safetensors", model, meta))
    assert loaded.config.pool == "flatten"
    torch.testing.assert_close(loaded.eval()(x).output, model.eval()(x).output)


def test_unknown_pool_names_the_choices():
    with pytest.raises(ValueError, match="flatten"):
        ModelConfig(pool="max")
