"""``score="centered"`` in a whole model: running token means are learnt and saved with the weights."""

from __future__ import annotations

import torch

from ermoe_ba.models import create_model
from ermoe_ba.training.checkpoint import build_meta, load_checkpoint, save_checkpoint


def test_centered_score_model_learns_its_token_means_and_keeps_them_in_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("ermoe_ba_tiny", score="centered")
    layers = [block.mlp for block in model.blocks if block.is_moe]
    assert layers and all(layer.token_mean.abs().sum() == 0 for layer in layers)
    x = torch.randn(2, 1, *model.default_preprocess.grid_shape)
    out = model(x, capture_routing=True)
    out.output.square().mean().backward()
    assert all(layer.token_mean.abs().sum() > 0 for layer in layers)  # a training forward moved them
    assert layers[0].experts.V.grad is not None and float(layers[0].experts.V.grad.abs().sum()) > 0

    meta = build_meta(model, "ermoe_ba_tiny", model_overrides={"score": "centered"})
    path = save_checkpoint(tmp_path / "centered.safetensors", model, meta)
    loaded, _ = load_checkpoint(path)
    assert loaded.config.score == "centered"
    for fresh, trained in zip([b.mlp for b in loaded.blocks if b.is_moe], layers, strict=True):
        assert torch.equal(fresh.token_mean, trained.token_mean)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).output, model(x).output, atol=1e-5, rtol=1e-5)
