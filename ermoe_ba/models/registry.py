"""Model registry: ``register_model`` / ``create_model`` / ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

from torch import nn

__all__ = ["create_model", "is_model", "list_models", "register_model"]

_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory ``(**overrides) -> nn.Module`` under ``name``.

    Examples
    --------
    >>> @register_model("my_tiny_model")  # doctest: +SKIP
    ... def my_tiny_model(**overrides): ...
    """

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODEL_FACTORIES and _MODEL_FACTORIES[name] is not factory:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODEL_FACTORIES[name] = factory
        return factory

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a shell-style ``pattern``, sorted.

    Examples
    --------
    >>> "ermoe_ba_tiny" in list_models("ermoe_ba_*")
    True
    """
    return sorted(n for n in _MODEL_FACTORIES if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODEL_FACTORIES


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` replace fields of its default config.

    Raises
    ------
    ValueError
        For an unknown name, with the closest registered names as a hint.

    Examples
    --------
    >>> model = create_model("ermoe_ba_tiny", router="softmax")
    >>> model.config.router
    'softmax'
    """
    if name not in _MODEL_FACTORIES:
        close = difflib.get_close_matches(name, list(_MODEL_FACTORIES), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}")
    return _MODEL_FACTORIES[name](**overrides)
