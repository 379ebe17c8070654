"""``input_pool``: a pooled model is exactly the unpooled model on average-pooled input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ermoe_ba.models.config import ModelConfig
from ermoe_ba.models.transformer import MoETransformer

SMALL = dict(embed_dim=32, depth=2, num_heads=2, stem="conv", num_experts=4, top_k=2)


def test_pooled_model_equals_the_half_resolution_model_on_pooled_input():
    torch.manual_seed(0)
    pooled = MoETransformer(ModelConfig(img_size=(32, 48, 32), patch_size=16, input_pool=2, **SMALL)).eval()
    half = MoETransformer(ModelConfig(img_size=(16, 24, 16), patch_size=8, **SMALL)).eval()
    half.load_state_dict(pooled.state_dict())  # pooling adds no parameters: same keys and shapes
    x = torch.randn(2, 1, 32, 48, 32)
    assert pooled.grid_size == half.grid_size == (2, 3, 2)
    torch.testing.assert_close(pooled(x).output, half(F.avg_pool3d(x, 2)).output)
    assert not torch.allclose(pooled(x).output, half(x[:, :, ::2, ::2, ::2]).output)  # it averages, not strides


def test_pool_factor_that_does_not_divide_the_patch_is_refused():
    with pytest.raises(ValueError, match="input_pool=3 must divide"):
        MoETransformer(ModelConfig(img_size=(48, 48, 48), patch_size=16, input_pool=3, **SMALL))
    with pytest.raises(ValueError, match="input_pool=0"):
        ModelConfig(input_pool=0)
