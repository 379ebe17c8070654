"""Projections ``V_eᵀ x`` of the routed ``(token, expert)`` slots, differentiable per slot.

The forward of an ERMoE layer needs every projection (the router scores all ``e`` experts), but
after routing only the ``k`` selected blocks per token are read: the gates read their norms and
the experts read them as their input. So the fast path projects on all bases without autograd,
keeps the selected blocks ``(n, k, r)`` (slot ``j`` of token ``t`` is ``V_eᵀ x_t`` with
``e = top_k_index[t, j]``) and makes only those differentiable. The gradients of the gates and of
the experts then arrive per slot, ``(n, k, r)``; no ``(n, e, r)`` gradient is materialised,
scattered and gathered again. The backward takes the slots sorted by expert (the MoE layer shares
the dispatch's sort) and runs, per expert,
``∂V_e = X_eᵀ G_e`` and the rows ``G_e V_eᵀ`` that one ``index_add_`` sums into ``∂x``: ``e / k``
times fewer multiply-adds than the dense ``x @ V`` backward (also faster on CPU: measured 4.1 ms
against 5.9 ms at n=4096, d=256, e=8, r=32, k=2, one thread).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ermoe_ba.layers.dispatch import SlotOrder, sort_slots

__all__ = ["routed_projection"]


class _RoutedProjection(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        tokens: torch.Tensor,  # (n, d)
        bases: torch.Tensor,  # (e, d, r)
        selected: torch.Tensor,  # (n, k, r) = tokens @ bases[top_k_index], computed without autograd
        slot_order: SlotOrder,  # the slots of top_k_index sorted by expert
    ) -> torch.Tensor:
        ctx.save_for_backward(tokens, bases, slot_order.order)
        ctx.k, ctx.counts = selected.shape[1], slot_order.counts
        return selected.view_as(selected)

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):  # type: ignore[override]
        tokens, bases, order = ctx.saved_tensors
        n, k, counts = tokens.shape[0], ctx.k, ctx.counts
        dim, rank = bases.shape[1:]
        grad_slots = grad.reshape(n * k, rank)
        token = order // k
        need_tokens, need_bases = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_slots = grad_slots.index_select(0, order)  # (m, r), sorted by expert
        grad_bases = torch.zeros_like(bases) if need_bases else None
        grad_rows = grad_slots.new_empty(n * k, dim) if need_tokens else None  # (m, d), sorted by expert
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            block = slice(start, start + count)
            start += count
            if grad_bases is not None:  # the block's token rows are gathered and used while in cache
                torch.mm(tokens.index_select(0, token[block]).t(), grad_slots[block], out=grad_bases[e])
            if grad_rows is not None:
                torch.mm(grad_slots[block], bases[e].t(), out=grad_rows[block])
        grad_tokens = None if grad_rows is None else grad_rows.new_zeros(n, dim).index_add_(0, token, grad_rows)
        return grad_tokens, grad_bases, None, None


def routed_projection(
    tokens: torch.Tensor,
    bases: torch.Tensor,
    selected: torch.Tensor,
    top_k_index: torch.Tensor,
    slot_order: SlotOrder | None = None,
) -> torch.Tensor:
    """``selected`` (``= V_eᵀ x`` of the routed slots, ``(n, k, r)``) made differentiable again.

    ``selected[t, j]`` must equal ``tokens[t] @ bases[top_k_index[t, j]]``; the backward returns
    the gradients of ``tokens`` ``(n, d)`` and ``bases`` ``(e, d, r)`` from the per-slot gradient.
    ``slot_order`` is :func:`~ermoe_ba.layers.dispatch.sort_slots` of ``top_k_index`` if the caller
    has it already (the backward needs the slots sorted by expert); otherwise it is computed here.

    Examples
    --------
    >>> x, v = torch.randn(5, 6, requires_grad=True), torch.randn(3, 6, 2, requires_grad=True)
    >>> index = torch.tensor([[0, 2]] * 5)
    >>> with torch.no_grad():
    ...     sel = torch.einsum("nd,nkdr->nkr", x, v[index])
    >>> routed_projection(x, v, sel, index).sum().backward()
    >>> torch.allclose(v.grad[1], torch.zeros(6, 2)), v.grad[0].shape
    (True, torch.Size([6, 2]))
    """
    if slot_order is None:
        slot_order = sort_slots(top_k_index, bases.shape[0])
    return _RoutedProjection.apply(tokens, bases, selected, slot_order)
