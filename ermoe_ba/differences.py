"""One wording for "this file was made with other settings" messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["describe_differences"]


def describe_differences(
    earlier: Mapping[str, Any] | None, now: Mapping[str, Any] | None, keys: Iterable[str] | None = None
) -> str:
    """``"key: <earlier> there, <now> now"`` for every key whose values differ, comma-separated.

    ``keys`` limits the comparison (default: every key of either mapping, sorted); a missing key
    reads as None. Returns ``""`` when nothing differs.

    Examples
    --------
    >>> describe_differences({"lr": 0.1, "seed": 0}, {"lr": 0.01, "seed": 0})
    'lr: 0.1 there, 0.01 now'
    """
    earlier, now = earlier or {}, now or {}
    compared = sorted(set(earlier) | set(now)) if keys is None else list(keys)
    differ = [k for k in compared if earlier.get(k) != now.get(k)]
    return ", ".join(f"{k}: {earlier.get(k)!r} there, {now.get(k)!r} now" for k in differ)
