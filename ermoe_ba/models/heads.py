"""The head every registered model puts on its pooled features, chosen by its config."""

from __future__ import annotations

from torch import nn

from ermoe_ba.layers.binned_head import BinnedRegressionHead
from ermoe_ba.models.config import ModelConfig

__all__ = ["build_head"]


def build_head(config: ModelConfig, in_features: int) -> nn.Module:
    """A binned regression head (``config.output_bins > 0``), a linear head, or none (``num_outputs=0``).

    Examples
    --------
    >>> build_head(ModelConfig(num_outputs=1), 8)
    Linear(in_features=8, out_features=1, bias=True)
    >>> type(build_head(ModelConfig(output_bins=20), 8)).__name__
    'BinnedRegressionHead'
    """
    if config.output_bins:
        return BinnedRegressionHead(in_features, config.output_bins)
    if config.num_outputs > 0:
        return nn.Linear(in_features, config.num_outputs)
    return nn.Identity()
