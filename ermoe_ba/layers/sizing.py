"""Parameter budgets: active parameters per token and MoE widths that match a dense MLP."""

from __future__ import annotations

from torch import nn

from ermoe_ba.layers._checks import check_choice, check_positive_int
from ermoe_ba.layers.moe import MoELayer

__all__ = ["active_parameter_count", "equal_active_hidden"]


def active_parameter_count(module: nn.Module) -> int:
    """Parameters one token touches in a forward pass.

    :class:`~ermoe_ba.layers.moe.MoELayer` submodules count their router, all bases and
    ``top_k`` experts; every other parameter counts fully.

    Examples
    --------
    >>> from ermoe_ba.layers import Mlp
    >>> active_parameter_count(Mlp(4, 8))  # 4*8 + 8 + 8*4 + 4
    76
    """
    if isinstance(module, MoELayer):
        return module.active_parameter_count()
    total = sum(p.numel() for p in module.parameters(recurse=False))
    return total + sum(active_parameter_count(child) for child in module.children())


def equal_active_hidden(
    dim: int,
    dense_hidden: int,
    num_experts: int,
    top_k: int,
    router: str,
    expert_rank: int | None = None,
) -> int:
    """Expert hidden width that gives an MoE layer the active parameters of ``Mlp(dim, dense_hidden)``.

    Dense MLP: ``2·d·H + H + d``. Softmax MoE: router ``d·e`` + ``k`` dense experts
    ``(2·d·h + h + d)``. ERMoE: all bases ``e·d·r`` (every score needs them) + ``k`` eigen experts
    ``(r + h·r + h + h·d + d)``. Solved for ``h`` and rounded to the nearest integer.

    Examples
    --------
    >>> equal_active_hidden(256, 1024, num_experts=8, top_k=2, router="softmax")
    510
    >>> equal_active_hidden(256, 1024, num_experts=8, top_k=2, router="ermoe")  # r = 32
    795
    """
    for name, value in (
        ("dim", dim),
        ("dense_hidden", dense_hidden),
        ("num_experts", num_experts),
        ("top_k", top_k),
    ):
        check_positive_int(name, value)
    check_choice("router", router, ("ermoe", "softmax"))
    d, k = dim, top_k
    dense = 2 * d * dense_hidden + dense_hidden + d
    if router == "softmax":
        hidden = (dense - d * num_experts - k * d) / (k * (2 * d + 1))
        minimum = 1
    else:
        r = check_positive_int("expert_rank", expert_rank if expert_rank is not None else max(1, d // num_experts))
        hidden = (dense - num_experts * d * r - k * (r + d)) / (k * (r + 1 + d))
        minimum = r
    result = round(hidden)
    if result < minimum:
        raise ValueError(
            f"a dense MLP with hidden width {dense_hidden} has too few parameters for {num_experts} "
            f"{router} experts with top_k={top_k} (would need hidden width {hidden:.1f} < {minimum}); "
            "use fewer experts, a smaller top_k or a wider dense reference."
        )
    return result
