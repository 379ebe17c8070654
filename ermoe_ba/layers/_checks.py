"""Tiny argument checks shared by the layers (the layers package imports nothing above it)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["check_choice", "check_positive_int", "check_probability"]


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError with a hint.

    Examples
    --------
    >>> check_choice("router", "ermoe", ("ermoe", "softmax"))
    'ermoe'
    """
    options = tuple(choices)
    if value in options:
        return value
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name}={value!r} is not supported; expected one of {list(options)}.{hint}")


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def check_probability(name: str, value: float) -> float:
    """Return ``value`` if it lies in [0, 1), else raise a ValueError naming it."""
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}.")
    return float(value)
