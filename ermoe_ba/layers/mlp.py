"""The dense transformer feed-forward layer (the baseline the MoE layers replace)."""

from __future__ import annotations

import torch
from torch import nn

from ermoe_ba.layers._checks import check_positive_int, check_probability

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Two-layer perceptron ``fc2(drop(act(fc1(x))))`` with dropout after ``fc2`` too.

    Parameter names follow timm (``fc1``, ``act``, ``drop``, ``fc2``) so weights port over.

    Parameters
    ----------
    in_features
        Input width.
    hidden_features
        Hidden width (default: ``in_features``).
    out_features
        Output width (default: ``in_features``).
    act_layer
        Activation class, instantiated without arguments.
    drop
        Dropout probability.
    bias
        Use biases in both linear layers.

    Examples
    --------
    >>> mlp = Mlp(64, hidden_features=256)
    >>> mlp(torch.zeros(2, 10, 64)).shape
    torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        hidden_features = check_positive_int("hidden_features", hidden_features or in_features)
        out_features = check_positive_int("out_features", out_features or in_features)
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop = nn.Dropout(check_probability("drop", drop))
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the perceptron to the last axis of ``x``."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
