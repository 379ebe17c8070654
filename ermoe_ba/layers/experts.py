"""Batched expert weights and the dense (softmax-baseline) experts.

Every expert bank gives the dispatch backends the same contract: per-expert weights of a
two-layer perceptron ``fc2(act(fc1(z)))`` (:class:`ExpertWeights`), plus whether ``z`` is the
token itself (dense experts) or a per-expert input (eigen experts feed ``V_eᵀ x``, computed once
per layer and shared with the router). The dispatch code is therefore written once for both.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ermoe_ba.layers._checks import check_positive_int

__all__ = ["DenseExperts", "ExpertBank", "ExpertWeights"]


class ExpertWeights(NamedTuple):
    """Weights of ``e`` two-layer experts, ready for batched matmuls.

    Axis letters: ``e`` experts, ``i`` expert input width, ``h`` hidden, ``d`` output width.

    Attributes
    ----------
    fc1_weight
        ``(e, i, h)`` contiguous, applied as ``z @ fc1_weight[e]``.
    fc1_bias
        ``(e, h)``.
    fc2_weight
        ``(e, h, d)``.
    fc2_bias
        ``(e, d)``.
    """

    fc1_weight: torch.Tensor
    fc1_bias: torch.Tensor
    fc2_weight: torch.Tensor
    fc2_bias: torch.Tensor


class ExpertBank(nn.Module):
    """Base class of expert banks; subclasses set the attributes and implement the methods.

    Attributes
    ----------
    num_experts, dim, hidden_features
        ``e``, token width ``d`` and expert hidden width ``h``.
    per_expert_inputs
        True if expert ``e`` reads row ``e`` of a per-token ``(n, e, i)`` input (eigen experts),
        False if all experts read the token itself, passed as ``(n, 1, d)``.
    act
        The activation module shared by all experts.
    """

    num_experts: int
    dim: int
    hidden_features: int
    per_expert_inputs: bool
    act: nn.Module

    def expert_weights(self) -> ExpertWeights:
        """The current weights in the batched layout."""
        raise NotImplementedError

    def forward_expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Reference output of expert ``index`` on raw tokens ``x`` ``(n, d)``."""
        raise NotImplementedError

    def active_parameter_count(self, top_k: int) -> int:
        """Parameters a token touches when routed to ``top_k`` experts."""
        raise NotImplementedError


def _uniform_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    # nn.Linear's default: kaiming_uniform(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(tensor, -bound, bound)


class DenseExperts(ExpertBank):
    """``e`` independent dense two-layer perceptrons stored as batched weights.

    Parameters
    ----------
    num_experts
        Number of experts ``e``.
    dim
        Token width ``d``.
    hidden_features
        Hidden width ``h`` of every expert.
    act_layer
        Activation class.

    Examples
    --------
    >>> experts = DenseExperts(4, 16, 32)
    >>> experts.forward_expert(2, torch.zeros(3, 16)).shape
    torch.Size([3, 16])
    """

    per_expert_inputs = False

    def __init__(self, num_experts: int, dim: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.dim = check_positive_int("dim", dim)
        self.hidden_features = check_positive_int("hidden_features", hidden_features)
        e, d, h = num_experts, dim, hidden_features
        self.W1 = nn.Parameter(_uniform_(torch.empty(e, d, h), d))
        self.b1 = nn.Parameter(_uniform_(torch.empty(e, h), d))
        self.W2 = nn.Parameter(_uniform_(torch.empty(e, h, d), h))
        self.b2 = nn.Parameter(_uniform_(torch.empty(e, d), h))
        self.act = act_layer()

    def expert_weights(self) -> ExpertWeights:
        return ExpertWeights(self.W1, self.b1, self.W2, self.b2)

    def forward_expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.act(x @ self.W1[index] + self.b1[index]) @ self.W2[index] + self.b2[index]

    def active_parameter_count(self, top_k: int) -> int:
        d, h = self.dim, self.hidden_features
        return top_k * (2 * d * h + h + d)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, dim={self.dim}, hidden_features={self.hidden_features}"
