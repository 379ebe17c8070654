"""``output_bins``: every regression model can carry SFCN's distribution head."""

from __future__ import annotations

import pytest
import torch

import ermoe_ba.models.sfcn  # noqa: F401
from ermoe_ba.layers.binned_head import BINNED_SPAN, BinnedRegressionHead
from ermoe_ba.models import create_model
from ermoe_ba.models.config import ModelConfig, PreprocessConfig

GRID = PreprocessConfig(grid_shape=(32, 32, 32), grid_origin=(-32.0, -32.0, -32.0))


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("sfcn_tiny", {"channels": (4, 8, 16)}), ("ermoe_ba_tiny", {"patch_size": 8, "embed_dim": 32, "num_heads": 2})],
)
def test_binned_model_outputs_its_mean_age_first_then_the_bin_log_probabilities(name, overrides):
    torch.manual_seed(0)
    model = create_model(name, preprocess=GRID, output_bins=16, **overrides).eval()
    assert isinstance(model.head, BinnedRegressionHead)
    with torch.no_grad():
        out = model(torch.randn(3, 1, 32, 32, 32)).output
    assert out.shape == (3, 17)
    torch.testing.assert_close(out[:, 1:].exp().sum(dim=1), torch.ones(3))
    torch.testing.assert_close(out[:, 0], out[:, 1:].exp() @ model.head.centres)
    assert out[:, 0].abs().max() < BINNED_SPAN


@pytest.mark.parametrize("bad", [dict(output_bins=1), dict(output_bins=10, num_outputs=3)])
def test_a_binned_head_needs_two_bins_and_one_regression_output(bad):
    with pytest.raises(ValueError, match="binned head needs at least 2 bins and one regression output"):
        ModelConfig(**bad)
