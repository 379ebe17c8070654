"""Auxiliary losses of the MoE layers (all return unweighted scalars; the layer applies weights)."""

from __future__ import annotations

import torch

__all__ = ["orthogonality_penalty", "router_z_loss", "switch_balance_loss"]


def switch_balance_loss(probs: torch.Tensor, top_k_index: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch-Transformer load-balancing loss ``E · Σ_e f_e · P_e``.

    ``f_e`` is the fraction of the ``n·k`` token-expert assignments that went to expert ``e``
    (not differentiable), ``P_e`` the mean router probability of ``e`` (differentiable). It equals
    1 for perfectly uniform routing and grows as routing concentrates.

    Parameters
    ----------
    probs
        ``(n, e)`` router probabilities.
    top_k_index
        ``(n, k)`` selected experts.
    num_experts
        ``e``.

    Examples
    --------
    >>> probs = torch.full((4, 2), 0.5)
    >>> switch_balance_loss(probs, torch.tensor([[0], [1], [0], [1]]), 2)
    tensor(1.)
    """
    counts = torch.bincount(top_k_index.reshape(-1), minlength=num_experts).to(probs.dtype)
    fraction = counts / top_k_index.numel()
    return num_experts * (fraction * probs.mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of ``logsumexp(logits)²`` (keeps logits small).

    Examples
    --------
    >>> router_z_loss(torch.zeros(3, 4))  # logsumexp = log 4
    tensor(1.9218)
    """
    return torch.logsumexp(logits, dim=-1).square().mean()


def orthogonality_penalty(basis: torch.Tensor) -> torch.Tensor:
    """``Σ ||BᵀB - I||²_F`` over a (batch of) ``(..., m, r)`` matrix; 0 iff columns are orthonormal.

    Examples
    --------
    >>> orthogonality_penalty(torch.eye(3)[:, :2])
    tensor(0.)
    >>> orthogonality_penalty(2 * torch.eye(2))  # each diagonal entry is 4 - 1
    tensor(18.)
    """
    gram = basis.mT @ basis
    eye = torch.eye(basis.shape[-1], dtype=basis.dtype, device=basis.device)
    return (gram - eye).square().sum()
