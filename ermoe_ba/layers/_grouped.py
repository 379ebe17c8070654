"""Fused autograd function behind the ``"sorted"`` dispatch backend.

Token-expert slots arrive sorted by expert, so each expert's slots form one contiguous block of
rows. One gather builds all expert inputs, a loop over experts runs ``fc1 -> act -> fc2`` per
block with the hidden activations kept as one small tensor per expert (reused while in cache,
recycled by the allocator), and one ``index_add_`` combines the gated outputs. The hand-written
backward mirrors it. What this buys over plain autograd on the same loop (measured on CPU): no
``cat``/``split`` copies of the blocks, no per-slice weight-gradient zero tensors, no
accumulating scatter for the gather, and fc1's bias folded into the matmul (a column of ones)
where the input width leaves room in its alignment padding (below); an aligned width instead gets
the bias from ``addmm``, since one more column would cost a whole aligned group (ERMoE's rank-32
inputs would become 40 wide: 25 % more fc1 multiply-adds; the layer step is 1-2 % faster without).
We also tried padding the blocks to the largest one and using ``torch.bmm``: fewer kernel launches
(better on an oversubscribed machine) but 10-20 % more single-thread CPU time, because padding and
the activation of padded rows are real work. The hidden width, on the other hand, is padded with
zero weights to a multiple of ``HIDDEN_ALIGN``, and the input width (with the bias column, if
folded) to a multiple of ``INPUT_ALIGN``: CPU BLAS runs odd widths far slower per unit (one MoE
step of the layer benchmark, ERMoE width 795 against 800: 172 against 151 ms on 2 threads; the
softmax width 510 against 512: 169 against 152 ms; an fc1 with 257 inputs ~10 % slower than with
264). Padded units read zero weights and feed zero weights, so outputs and gradients are unchanged
for any activation. Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["HIDDEN_ALIGN", "INPUT_ALIGN", "grouped_experts"]

HIDDEN_ALIGN = 16  # expert hidden width padded to a multiple of this inside the kernel
INPUT_ALIGN = 8  # expert input width + the bias column, likewise


def _aligned(size: int, multiple: int) -> int:
    return size + (-size) % multiple


def _act_backward_(act: nn.Module, grad: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """Gradient through ``act`` at ``pre``, written into ``grad`` (a fresh temporary) when possible."""
    # in place: the (c, h) block is still in cache and no second block-sized buffer is touched
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_backward.grad_input(grad, pre, approximate=act.approximate, grad_input=grad)
    if type(act) is nn.SiLU:
        return torch.ops.aten.silu_backward.grad_input(grad, pre, grad_input=grad)
    if type(act) is nn.ReLU:
        return grad.mul_(pre > 0)
    with torch.enable_grad():
        leaf = pre.detach().requires_grad_()
        (out,) = torch.autograd.grad(act(leaf), leaf, grad)
    return out


class _GroupedExperts(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        source: torch.Tensor,  # (s, i) rows the experts read
        gate: torch.Tensor,  # (m,) gate of each sorted slot
        w1: torch.Tensor,  # (e, i, h)
        b1: torch.Tensor,  # (e, h)
        w2: torch.Tensor,  # (e, h, d)
        b2: torch.Tensor,  # (e, d)
        rows: torch.Tensor,  # (m,) row of `source` per slot
        tokens: torch.Tensor,  # (m,) output row per slot
        counts: list[int],
        num_tokens: int,
        act: nn.Module,
    ) -> torch.Tensor:
        num_experts, width, hidden_width = w1.shape
        width_aug, padded = _aligned(width, INPUT_ALIGN), _aligned(hidden_width, HIDDEN_ALIGN)
        # where alignment pads the input anyway, fc1's bias rides in the matmul as an input column of
        # ones: no broadcast copy of the bias into every (c, h) block, no bias-gradient reduction
        fold_bias = width_aug > width
        m = rows.numel()
        z = source.index_select(0, rows)  # (m, i)
        if fold_bias:  # (m, i'): the inputs, a column of ones, zeros
            z = torch.cat([z, source.new_ones(m, 1), source.new_zeros(m, width_aug - width - 1)], dim=1)
        w1_aug = w1.new_zeros(num_experts, width_aug, padded)  # (e, i', h'): fc1, its bias row if folded, zeros
        w1_aug[:, :width, :hidden_width] = w1
        b1_aug = None
        if fold_bias:
            w1_aug[:, width, :hidden_width] = b1
        else:
            b1_aug = b1.new_zeros(num_experts, padded)
            b1_aug[:, :hidden_width] = b1
        if padded != hidden_width:
            w2 = torch.cat([w2, w2.new_zeros(num_experts, padded - hidden_width, w2.shape[-1])], dim=1)  # (e, h', d)
        y = source.new_empty(m, w2.shape[-1])  # (m, d)
        # hidden activations stay one small tensor per expert: each block is used while in cache
        # and the allocator recycles the blocks instead of faulting in a fresh big buffer
        hidden: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for e, block in enumerate(_blocks(counts)):
            if block is None:
                hidden.append(None)
                continue
            pre = z[block] @ w1_aug[e] if b1_aug is None else torch.addmm(b1_aug[e], z[block], w1_aug[e])  # (c, h')
            post = act(pre)
            torch.addmm(b2[e], post, w2[e], out=y[block])
            hidden.append((pre, post))
        out = source.new_zeros(num_tokens, w2.shape[-1]).index_add_(0, tokens, y * gate.unsqueeze(1))
        ctx.save_for_backward(z, y, gate, w1_aug, w2, rows, tokens)
        ctx.hidden, ctx.counts, ctx.act, ctx.source_shape = hidden, counts, act, source.shape
        ctx.width, ctx.hidden_width = width, hidden_width
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):  # type: ignore[override]
        z, y, gate, w1_aug, w2, rows, tokens = ctx.saved_tensors  # widths padded to i', h'
        num_experts, width_aug, padded = w1_aug.shape
        width, w1 = ctx.width, w1_aug[:, : ctx.width]
        grad_w1_aug = w1_aug.new_zeros(num_experts, width_aug, padded)  # folded bias: its gradient in row `width`
        grad_b1 = None if width_aug > width else w1_aug.new_zeros(num_experts, padded)
        grad_w2 = torch.zeros_like(w2)
        grad_y = grad_out.index_select(0, tokens)  # (m, d), before gating
        grad_gate = (grad_y * y).sum(1)
        grad_y.mul_(gate.unsqueeze(1))
        expert = torch.repeat_interleave(torch.arange(num_experts, device=w2.device), torch.tensor(ctx.counts))
        grad_b2 = grad_y.new_zeros(num_experts, grad_y.shape[1]).index_add_(0, expert.to(grad_y.device), grad_y)
        grad_z = z.new_empty(z.shape[0], width)
        for e, (block, saved) in enumerate(zip(_blocks(ctx.counts), ctx.hidden, strict=True)):
            if saved is None:
                continue
            pre, post = saved
            torch.mm(post.t(), grad_y[block], out=grad_w2[e])
            grad_pre = _act_backward_(ctx.act, grad_y[block] @ w2[e].t(), pre)
            torch.mm(z[block].t(), grad_pre, out=grad_w1_aug[e])
            if grad_b1 is not None:
                torch.sum(grad_pre, dim=0, out=grad_b1[e])
            torch.mm(grad_pre, w1[e].t(), out=grad_z[block])
        grad_source = grad_z.new_zeros(ctx.source_shape).index_add_(0, rows, grad_z)
        h = ctx.hidden_width
        grad_b1 = grad_w1_aug[:, width, :h] if grad_b1 is None else grad_b1[:, :h]
        grad_w1, grad_w2 = grad_w1_aug[:, :width, :h], grad_w2[:, :h]
        return grad_source, grad_gate, grad_w1, grad_b1, grad_w2, grad_b2, None, None, None, None, None


def _blocks(counts: list[int]) -> list[slice | None]:
    """Row slice of each expert's slots (None for an expert without slots)."""
    out: list[slice | None] = []
    start = 0
    for count in counts:
        out.append(slice(start, start + count) if count else None)
        start += count
    return out


def grouped_experts(
    source: torch.Tensor,
    gate: torch.Tensor,
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    rows: torch.Tensor,
    tokens: torch.Tensor,
    counts: list[int],
    num_tokens: int,
    act: nn.Module,
) -> torch.Tensor:
    """``out[tokens[s]] += gate[s] · expert(source[rows[s]])`` for slots ``s`` sorted by expert.

    ``counts[e]`` consecutive slots belong to expert ``e``; returns ``(num_tokens, d)``.
    """
    if any(p.requires_grad for p in act.parameters()):
        raise ValueError(
            f"the 'sorted' dispatch backend does not train activation parameters ({type(act).__name__}); "
            "use dispatch='eager' or a parameter-free act_layer."
        )
    w1, b1, w2, b2 = weights
    return _GroupedExperts.apply(source, gate, w1, b1, w2, b2, rows, tokens, counts, num_tokens, act)
