"""``score="centered"`` / ``"whitened"`` in a whole model: running token statistics are learnt and saved."""

from __future__ import annotations

import pytest
import torch

from ermoe_ba.models import create_model
from ermoe_ba.training.checkpoint import build_meta, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("score", ["centered", "whitened"])
def test_score_model_learns_its_token_statistics_and_keeps_them_in_a_checkpoint(tmp_path, score):
    torch.manual_seed(0)
    model = create_model("ermoe_ba_tiny", score=score)
    layers = [block.mlp for block in model.blocks if block.is_moe]
    assert layers and all(layer.token_mean.abs().sum() == 0 for layer in layers)
    x = torch.randn(2, 1, *model.default_preprocess.grid_shape)
    out = model(x, capture_routing=True)
    out.output.square().mean().backward()
    assert all(layer.token_mean.abs().sum() > 0 for layer in layers)  # a training forward moved them
    assert layers[0].experts.V.grad is not None and float(layers[0].experts.V.grad.abs().sum()) > 0

    meta = build_meta(model, "ermoe_ba_tiny", model_overrides={"score": score})
    path = save_checkpoint(tmp_path / f"{score}.safetensors", model, meta)
    loaded, _ = load_checkpoint(path)
    assert loaded.config.score == score
    for fresh, trained in zip([b.mlp for b in loaded.blocks if b.is_moe], layers, strict=True):
        assert torch.equal(fresh.token_mean, trained.token_mean)
        if score == "whitened":
            assert torch.equal(fresh.token_cov, trained.token_cov)
            assert not torch.equal(trained.token_cov, torch.eye(trained.dim))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).output, model(x).output, atol=1e-5, rtol=1e-5)
