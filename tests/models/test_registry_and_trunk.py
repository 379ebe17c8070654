from __future__ import annotations

import re

import pytest
import torch

from ermoe_ba.models import ModelConfig, MoETransformer, PreprocessConfig, create_model, list_models


def _example_input(model: MoETransformer, batch: int = 1) -> torch.Tensor:
    cfg = model.config
    if cfg.input_type == "tokens":
        return torch.randint(0, cfg.vocab_size, (batch, cfg.max_seq_len))
    return torch.randn(batch, cfg.in_chans, *cfg.img_size)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name)
    out = model(_example_input(model, batch=2))  # BatchNorm stems need 2 samples in training mode
    loss = out.output.float().pow(2).mean() + out.aux_loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_unknown_model_name_suggests_close_match():
    with pytest.raises(ValueError, match="Did you mean 'ermoe_ba_tiny'"):
        create_model("ermoe_ba_tinny")


def test_bad_router_name_suggests_close_match():
    with pytest.raises(ValueError, match="Did you mean 'softmax'"):
        create_model("ermoe_ba_tiny", router="softmx")


@pytest.mark.parametrize("router", ["ermoe", "softmax", "softmax+lbl", "dense"])
def test_brain_age_trunk_routers_and_aux_loss(router):
    torch.manual_seed(0)
    model = create_model("ermoe_ba_tiny", router=router)
    x = torch.randn(2, 1, *model.default_preprocess.grid_shape)
    out = model(x, capture_routing=True)
    assert out.output.shape == (2, 1)
    if router == "softmax+lbl":
        assert out.aux_loss.item() > 0
    else:
        assert out.aux_loss.item() == 0.0
    if router == "dense":
        assert out.routing is None or len(out.routing) == 0
        assert model.moe_block_indices == []
    else:
        assert model.moe_block_indices == [1, 3]  # every 2nd block
        assert out.routing.layer_indices == [1, 3]
        layer = out.routing[1]
        assert out.routing.grid_size == (5, 6, 5)
        assert layer.top_k_index.shape == (2, 150, 2)
        assert layer.scores.shape == (2, 150, 8)
        assert torch.allclose(layer.top_k_weight.sum(-1), torch.ones(2, 150), atol=1e-5)


def test_routing_capture_off_gives_identical_output_and_no_trace():
    torch.manual_seed(0)
    model = create_model("ermoe_ba_tiny").eval()
    x = torch.randn(1, 1, *model.default_preprocess.grid_shape)
    with torch.no_grad():
        off = model(x)
        on = model(x, capture_routing=True)
    assert off.routing is None
    assert torch.equal(off.output, on.output)
    assert len(on.routing) == 2


def test_same_trunk_takes_2d_images_and_token_sequences():
    torch.manual_seed(0)
    vit = MoETransformer(
        ModelConfig(
            spatial_dims=2,
            in_chans=3,
            img_size=(32, 48),
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_experts=4,
            pool="cls",
            num_outputs=10,
        )
    )
    out = vit(torch.randn(3, 3, 32, 48), capture_routing=True)
    assert out.output.shape == (3, 10)
    assert out.routing.grid_size == (4, 6)
    assert out.routing[1].top_k_index.shape == (3, 24, 2)  # CLS token dropped from the trace

    text = MoETransformer(
        ModelConfig(
            input_type="tokens",
            vocab_size=100,
            max_seq_len=12,
            causal=True,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_experts=4,
            num_outputs=0,
        )
    )
    ids = torch.randint(0, 100, (2, 12))
    features = text(ids, capture_routing=True)
    assert features.output.shape == (2, 32)
    assert features.routing.grid_size is None
    # causal attention: changing the last token leaves the first tokens' features unchanged
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 100
    a = text.forward_features(ids).tokens
    b = text.forward_features(changed).tokens
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-5)
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_forward_head_pre_logits_returns_pooled_features():
    model = create_model("ermoe_ba_tiny")
    pooled = torch.randn(2, model.config.embed_dim)
    assert torch.equal(model.forward_head(pooled, pre_logits=True), pooled)
    assert model.forward_head(pooled).shape == (2, 1)


def test_configs_round_trip_through_dicts():
    cfg = create_model("ermoe_ba_tiny", router="softmax+lbl").config
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    pre = PreprocessConfig(voxel_size=3.0, grid_shape=(48, 64, 48))
    assert PreprocessConfig.from_dict(pre.to_dict()) == pre
    assert pre.cache_key() != PreprocessConfig().cache_key()
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"embed_dimm": 3})



@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"depth": "4"}, "ModelConfig.depth='4': expected an integer"),
        ({"depth": 4.0}, "ModelConfig.depth=4.0: expected an integer"),
        ({"mlp_ratio": "2"}, "ModelConfig.mlp_ratio='2': expected a number"),
        ({"disjoint_bases": "yes"}, "ModelConfig.disjoint_bases='yes': expected true or false"),
        ({"expert_rank": 1.5}, "ModelConfig.expert_rank=1.5: expected an integer or null"),
        ({"patch_size": [8, "8", 8]}, "ModelConfig.patch_size=[8, '8', 8]: expected a list of integers or an integer"),
    ],
)
def test_config_values_of_the_wrong_type_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**overrides)


def test_config_accepts_ints_for_floats_lists_for_tuples_and_none_where_allowed():
    config = ModelConfig(mlp_ratio=2, img_size=[64, 64, 64], patch_size=[8, 8, 8], expert_rank=None)
    assert config.img_size == (64, 64, 64) and config.patch_size == (8, 8, 8) and config.mlp_ratio == 2

def test_brain_age_model_follows_a_custom_grid():
    pre = PreprocessConfig(voxel_size=4.0, grid_shape=(40, 48, 40), grid_origin=(-80, -112, -74))
    model = create_model("ermoe_ba_tiny", preprocess=pre, patch_size=8)
    assert model.config.img_size == (40, 48, 40)
    assert model.grid_size == (5, 6, 5)
    assert model(torch.randn(1, 1, 40, 48, 40)).output.shape == (1, 1)


def test_conv_stem_keeps_token_grid_and_shrinks_the_stem():
    linear = create_model("ermoe_ba_tiny", stem="linear", input_pool=1)  # 16^3-voxel linear patches
    conv = create_model("ermoe_ba_tiny", input_pool=1)  # the default stem, full resolution
    assert conv.grid_size == linear.grid_size == create_model("ermoe_ba_tiny").grid_size == (5, 6, 5)
    n_linear = sum(p.numel() for p in linear.patch_embed.parameters())
    n_conv = sum(p.numel() for p in conv.patch_embed.parameters())
    assert n_conv < n_linear
    out = conv(torch.randn(1, 1, 80, 96, 80), capture_routing=True)
    assert out.routing[1].top_k_index.shape == (1, 150, 2)


def test_sfcn_style_stem_keeps_the_token_grid_and_trains():
    model = create_model("ermoe_ba_tiny", stem="conv_pool", stem_width=4)
    assert model.grid_size == create_model("ermoe_ba_tiny").grid_size == (5, 6, 5)
    out = model(torch.randn(2, 1, 80, 96, 80), capture_routing=True)
    assert out.routing[1].top_k_index.shape == (2, 150, 2)
    out.output.sum().backward()
    first_conv = model.patch_embed.proj[0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_unknown_stem_names_the_choices():
    with pytest.raises(ValueError, match="conv_pool"):
        create_model("ermoe_ba_tiny", stem="sfcn")
