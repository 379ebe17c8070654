"""Projection ``V_eᵀ x`` on all expert bases with a backward that only visits routed slots.

The forward of an ERMoE layer needs every projection (the router scores all ``e`` experts), but
after routing only the ``k`` selected ``(token, expert)`` blocks are read: the gates read the
selected norms and a dispatch backend reads ``inputs[t, e]`` only for slots with
``top_k_index[t, j] == e`` (the dispatch contract). The gradient of the projection is therefore
zero outside those blocks, and the plain ``x @ V`` backward (two dense ``(n, d) x (d, e·r)``
matmuls) does ``e / k`` times the needed work. Here the backward gathers the selected blocks,
sorts them by expert and runs one ``(c, r) x (r, d)`` and one ``(d, c) x (c, r)`` matmul per
expert. Callers must only differentiate through the selected blocks (``MoELayer`` does; its
eager path keeps plain autograd and tests compare the two).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["routed_projection"]


class _RoutedProjection(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        tokens: torch.Tensor,  # (n, d)
        bases: torch.Tensor,  # (e, d, r)
        projection: torch.Tensor,  # (n, e, r) = tokens @ bases, computed without autograd
        top_k_index: torch.Tensor,  # (n, k)
    ) -> torch.Tensor:
        ctx.save_for_backward(tokens, bases, top_k_index)
        return projection.view_as(projection)

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):  # type: ignore[override]
        tokens, bases, top_k_index = ctx.saved_tensors
        n, k = top_k_index.shape
        num_experts, dim, rank = bases.shape
        grad_slots = grad.gather(1, top_k_index.unsqueeze(-1).expand(n, k, rank)).reshape(n * k, rank)
        expert = top_k_index.reshape(-1)
        order = torch.argsort(expert, stable=True)
        counts = torch.bincount(expert, minlength=num_experts).tolist()
        token = order // k
        grad_slots = grad_slots.index_select(0, order)  # (m, r), sorted by expert
        need_tokens, need_bases = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows = tokens.index_select(0, token) if need_bases else None  # (m, d)
        grad_bases = torch.zeros_like(bases) if need_bases else None
        grad_rows = grad_slots.new_empty(n * k, dim) if need_tokens else None
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            block = slice(start, start + count)
            start += count
            if grad_bases is not None and rows is not None:
                torch.mm(rows[block].t(), grad_slots[block], out=grad_bases[e])
            if grad_rows is not None:
                torch.mm(grad_slots[block], bases[e].t(), out=grad_rows[block])
        grad_tokens = None
        if grad_rows is not None:
            grad_tokens = grad_rows.new_zeros(n, dim).index_add_(0, token, grad_rows)
        return grad_tokens, grad_bases, None, None


def routed_projection(
    tokens: torch.Tensor, bases: torch.Tensor, projection: torch.Tensor, top_k_index: torch.Tensor
) -> torch.Tensor:
    """``projection`` (``= tokens @ bases`` per expert, ``(n, e, r)``) made differentiable again.

    The backward assumes the incoming gradient is zero outside the routed blocks
    ``[t, top_k_index[t, j]]`` (see the module docstring) and returns the gradients of ``tokens``
    ``(n, d)`` and ``bases`` ``(e, d, r)`` from those blocks only.
    """
    return _RoutedProjection.apply(tokens, bases, projection, top_k_index)
