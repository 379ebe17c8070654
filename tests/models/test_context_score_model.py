from __future__ import annotations

import io

import torch

from ermoe_ba.models import ModelConfig, create_model


def test_context_score_model_trains_and_round_trips_through_a_checkpoint():
    torch.manual_seed(0)
    model = create_model("ermoe_ba_tiny", score="context")
    assert model.config.score == "context"
    layers = [block.mlp for block in model.blocks if block.is_moe]
    assert layers and all(layer.needs_context for layer in layers)
    x = torch.randn(2, 1, *model.default_preprocess.grid_shape)
    out = model(x, capture_routing=True)
    (out.output.square().mean() + out.aux_loss).backward()
    bases = layers[0].experts.V
    assert bases.grad is not None and float(bases.grad.abs().sum()) > 0
    scores = out.routing[model.moe_block_indices[0]].scores
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0

    buffer = io.BytesIO()
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    config = ModelConfig.from_dict(saved["config"])
    assert config.score == "context"
    fresh = create_model("ermoe_ba_tiny", **config.to_dict())
    fresh.load_state_dict(saved["state_dict"])
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).output, model(x).output, atol=1e-5, rtol=1e-5)


def test_configs_without_the_score_field_load_as_subspace():
    old = ModelConfig().to_dict()
    del old["score"]  # a checkpoint written before the option existed
    assert ModelConfig.from_dict(old).score == "subspace"
