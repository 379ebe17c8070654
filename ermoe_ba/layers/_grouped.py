"""Fused autograd function behind the ``"sorted"`` dispatch backend.

Token-expert slots arrive sorted by expert, so each expert's slots are one contiguous block of
rows. For each block we gather the inputs, run ``fc1 -> act -> fc2`` with ``addmm`` straight into
preallocated buffers, scale by the gate and ``index_add_`` into the output. Doing one expert at a
time keeps its hidden activations in cache, and the hand-written backward avoids the copies
autograd would add (``cat``/``split`` of the blocks, per-slice weight gradients, an
accumulating scatter for the gather). Double backward is not supported.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["grouped_experts"]


def _act_backward(act: nn.Module, grad: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_backward(grad, pre, approximate=act.approximate)
    if type(act) is nn.SiLU:
        return torch.ops.aten.silu_backward(grad, pre)
    if type(act) is nn.ReLU:
        return grad * (pre > 0)
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
        m, hidden, out_dim = rows.numel(), w1.shape[-1], w2.shape[-1]
        z = source.index_select(0, rows)  # (m, i)
        pre = z.new_empty(m, hidden)
        post = z.new_empty(m, hidden)
        y = z.new_empty(m, out_dim)
        out = z.new_zeros(num_tokens, out_dim)
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            block = slice(start, start + count)
            torch.addmm(b1[e], z[block], w1[e], out=pre[block])
            post[block] = act(pre[block])
            torch.addmm(b2[e], post[block], w2[e], out=y[block])
            out.index_add_(0, tokens[block], y[block] * gate[block].unsqueeze(1))
            start += count
        ctx.save_for_backward(z, pre, post, y, gate, w1, w2, rows, tokens)
        ctx.counts, ctx.act, ctx.source_shape = counts, act, source.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):  # type: ignore[override]
        z, pre, post, y, gate, w1, w2, rows, tokens = ctx.saved_tensors
        grad_w1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
        grad_b1 = w1.new_zeros(w1.shape[0], w1.shape[2])
        grad_b2 = w2.new_zeros(w2.shape[0], w2.shape[2])
        grad_gate = torch.empty_like(gate)
        grad_z = torch.empty_like(z)
        start = 0
        for e, count in enumerate(ctx.counts):
            if count == 0:
                continue
            block = slice(start, start + count)
            grad_y = grad_out.index_select(0, tokens[block])  # (c, d), before gating
            grad_gate[block] = (grad_y * y[block]).sum(1)
            grad_y.mul_(gate[block].unsqueeze(1))
            torch.mm(post[block].t(), grad_y, out=grad_w2[e])
            torch.sum(grad_y, 0, out=grad_b2[e])
            grad_pre = _act_backward(ctx.act, grad_y @ w2[e].t(), pre[block])
            torch.mm(z[block].t(), grad_pre, out=grad_w1[e])
            torch.sum(grad_pre, 0, out=grad_b1[e])
            torch.mm(grad_pre, w1[e].t(), out=grad_z[block])
            start += count
        grad_source = grad_z.new_zeros(ctx.source_shape).index_add_(0, rows, grad_z)
        return grad_source, grad_gate, grad_w1, grad_b1, grad_w2, grad_b2, None, None, None, None, None


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
