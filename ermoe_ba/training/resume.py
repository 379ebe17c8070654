"""The state of a training run in one file, so a killed run continues where it stopped.

:func:`~ermoe_ba.training.loop.fit` rewrites the file atomically after every epoch: weights,
optimiser, learning-rate schedule, weight EMA, the best epoch so far, the history and every
random stream (torch's, CUDA's, the augmentation's). Continuing from it ends with the weights an
uninterrupted run ends with (on the same device and software; tests check it on CPU). A file made
with another recipe is refused rather than continued (options added to the recipe since the
file was written count as their defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ermoe_ba.atomic import atomic_path
from ermoe_ba.differences import describe_differences, with_missing_keys
from ermoe_ba.training.config import TrainConfig

__all__ = [
    "STATE_VERSION",
    "architecture_of",
    "load_raw_tensors",
    "load_training_state",
    "raw_tensors",
    "recipe_of",
    "save_training_state",
]

STATE_VERSION = 1
# settings that change how a run is executed or shown, not the weights it ends with
_NOT_RECIPE = ("device", "num_threads", "progress", "eval_batch_size")


def recipe_of(config: TrainConfig) -> dict[str, Any]:
    """The part of ``config`` that a continued run must share with the run that saved the state."""
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_RECIPE}


def random_streams() -> dict[str, Any]:
    """torch's CPU and (if present) CUDA generator states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_random_streams(streams: dict[str, Any]) -> None:
    """Inverse of :func:`random_streams` (CUDA states only where CUDA is present)."""
    torch.set_rng_state(streams["torch"])
    if streams["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(streams["cuda"])


def raw_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as stored, bypassing state-dict hooks.

    A state dict would hold the orthonormalised eigen bases (:class:`~ermoe_ba.layers.EigenExperts`
    writes those), but the weight EMA averages the raw ones, which are not orthonormal; continuing
    from the retracted copies would move the average off its uninterrupted course.
    """
    named = [*module.named_parameters(), *module.named_buffers()]
    return {name: tensor.detach().clone() for name, tensor in named}


def load_raw_tensors(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy :func:`raw_tensors` back; ValueError when names or shapes differ."""
    own = dict([*module.named_parameters(), *module.named_buffers()])
    if set(own) != set(saved):
        missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        raise ValueError(f"missing {missing[:3]}, unexpected {extra[:3]}")
    for name, tensor in own.items():
        if tensor.shape != saved[name].shape:
            raise ValueError(f"{name} is {tuple(saved[name].shape)} there, {tuple(tensor.shape)} here")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(saved[name])


def architecture_of(model: torch.nn.Module) -> dict[str, Any] | None:
    """The model's :class:`~ermoe_ba.models.config.ModelConfig` as a dict (None for other modules)."""
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else None


def save_training_state(path: str | Path, state: dict[str, Any], config: TrainConfig, model: torch.nn.Module) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) with the recipe and architecture, atomically."""
    payload = {
        "version": STATE_VERSION,
        "recipe": recipe_of(config),
        "architecture": architecture_of(model),
        "random": random_streams(),
        **state,
    }
    return atomic_path(path, lambda tmp: torch.save(payload, tmp))


def load_training_state(path: str | Path, config: TrainConfig, model: torch.nn.Module) -> dict[str, Any]:
    """Read a state written by :func:`save_training_state` for ``model`` trained with ``config``.

    Raises
    ------
    ValueError
        The file is not a training state, or it was made with another recipe or architecture
        (the message names the settings that differ).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or foreign file
        raise ValueError(f"{path}: not a readable training state ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not a training state of this ermoe-ba version")
    for what, saved, wanted in (
        ("recipe", with_missing_keys(state["recipe"], recipe_of(TrainConfig())), recipe_of(config)),
        ("model", state["architecture"], architecture_of(model)),
    ):
        shown = describe_differences(saved, wanted)
        if shown:
            raise ValueError(
                f"{path}: saved by a run with another {what} ({shown}); rerun with the same options or delete the file"
            )
    restore_random_streams(state["random"])
    return state
