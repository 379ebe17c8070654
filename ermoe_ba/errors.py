"""One wording for a foreign library's exception inside our one-line error messages."""

from __future__ import annotations

__all__ = ["exception_summary"]


def exception_summary(err: BaseException, limit: int = 160) -> str:
    """``"<Type>: <message on one line, at most limit characters>"`` (the type twice if there is no message).

    Examples
    --------
    >>> exception_summary(ValueError("bad\\n  header"))
    'ValueError: bad header'
    """
    detail = " ".join(str(err).split())[:limit] or type(err).__name__
    return f"{type(err).__name__}: {detail}"
