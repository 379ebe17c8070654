"""Split a list of scans across ``--num-parts`` machines or ``torchrun`` ranks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["distributed_rank", "shard"]

T = TypeVar("T")


def shard(items: Sequence[T], num_parts: int = 1, part_id: int = 0) -> list[T]:
    """Every ``num_parts``-th item starting at ``part_id`` (interleaved, so parts stay balanced).

    Examples
    --------
    >>> shard(list(range(7)), 3, 1)
    [1, 4]
    """
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in [0, {num_parts - 1}], got {part_id}")
    return list(items[part_id::num_parts])


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` under ``torchrun`` (from its environment), else ``(0, 1)``."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
