"""Comparing the settings stored in a file with the current ones: one wording for differences, one
rule for options the file predates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["describe_differences", "with_missing_keys"]


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


def with_missing_keys(stored: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` with the keys of ``defaults`` it lacks filled in, recursively.

    Settings written before an option existed read as that option's default: an option added
    later defaults to the behaviour from before it.

    Examples
    --------
    >>> with_missing_keys({"lr": 1, "augment": {"shift": 2}}, {"lr": 0, "augment": {"shift": 4, "blur": 0}})
    {'lr': 1, 'augment': {'shift': 2, 'blur': 0}}
    """
    out = dict(stored)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], Mapping) and isinstance(value, Mapping):
            out[key] = with_missing_keys(out[key], value)
    return out
