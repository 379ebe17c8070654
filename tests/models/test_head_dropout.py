"""``head_drop_rate``: dropout on the pooled features alone, as the SFCN CNN has it."""

from __future__ import annotations

import torch
from torch import nn

from ermoe_ba.models import create_model
from ermoe_ba.models.config import ModelConfig
from ermoe_ba.models.transformer import MoETransformer

SMALL = dict(img_size=(32, 48, 32), patch_size=16, embed_dim=32, depth=2, num_heads=2, num_experts=4, top_k=2)


def dropout_rates(model: nn.Module) -> dict[str, float]:
    return {name: module.p for name, module in model.named_modules() if isinstance(module, nn.Dropout)}


def test_head_drop_rate_drops_before_the_head_only():
    torch.manual_seed(0)
    model = MoETransformer(ModelConfig(head_drop_rate=0.5, **SMALL))
    rates = dropout_rates(model)
    assert rates.pop("head_drop") == 0.5 and rates and set(rates.values()) == {0.0}
    tokens = torch.randn(2, 6, 32)
    pooled = model.pool(tokens)
    model.train()
    assert not torch.equal(model.forward_head(pooled), model.forward_head(pooled))
    model.eval()
    assert torch.equal(model.forward_head(pooled), model.forward_head(pooled))


def test_without_head_drop_rate_the_head_follows_drop_rate_and_sfcn_keeps_its_half():
    assert dropout_rates(MoETransformer(ModelConfig(drop_rate=0.2, **SMALL)))["head_drop"] == 0.2
    assert create_model("sfcn_tiny").head_drop.p == 0.5
    assert create_model("sfcn_tiny", head_drop_rate=0.0).head_drop.p == 0.0
