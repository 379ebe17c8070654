"""Test-time averaging of predictions over whole-voxel shifts of the input.

Training moves every volume by a random whole-voxel offset (``AugmentConfig.shift``), so a fitted
model has seen its inputs at many positions, yet its prediction still depends on where the brain
sits against the patch grid and the input pooling. Averaging the predictions of shifted copies
of a scan averages that part of the error away. Shifts are whole voxels, so the copies are the
same voxels (no interpolation, no blur: a fractional shift blurs, and the models read blur as age,
see :mod:`ermoe_ba.training.sensitivity`); the few slices moved out of the grid are background.
Measured in cross-validation (README, "Shift averaging"): 27 copies make a single ERMoE-ba model
0.1-0.2 y more accurate, the CNN no better, and the bundled hybrid no better, so it is off by
default.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ermoe_ba.models.ensemble import ModelEnsemble
from ermoe_ba.training.augment import whole_voxel_shift
from ermoe_ba.training.sensitivity import batched_predictions

if TYPE_CHECKING:
    from ermoe_ba.routing.trace import RoutingTrace

__all__ = [
    "OFFSET_SETS",
    "average_over_shifts",
    "checkpoint_shift_average",
    "named_offsets",
    "shift_averaged_age",
    "shift_offsets",
    "shifted_predictions",
    "standardized_ages",
    "with_shift_average",
]


Offset = tuple[int, int, int]

OFFSET_SETS: dict[str, Callable[[Offset], bool]] = {
    "none": lambda o: o == (0, 0, 0),
    "axes_1": lambda o: sum(map(abs, o)) <= 1,  # 7: the scan and one voxel along each axis either way
    "cube_1": lambda o: max(map(abs, o)) <= 1,  # 27
    "even_2": lambda o: all(c % 2 == 0 for c in o),  # 27, two voxels apart
    "cube_2": lambda o: max(map(abs, o)) <= 2,  # 125
}
"""Named subsets of the offsets a CV fold records (``cv.test_shift_radius 2``), for :func:`with_shift_average`."""


def shift_offsets(radius: int) -> list[Offset]:
    """Every whole-voxel offset with each coordinate in ``[-radius, radius]``, ``(0, 0, 0)`` first.

    Examples
    --------
    >>> len(shift_offsets(1)), shift_offsets(1)[:2]
    (27, [(0, 0, 0), (-1, -1, -1)])
    """
    if radius < 0:
        raise ValueError(f"shift radius must be >= 0 voxels, got {radius}")
    steps = range(-radius, radius + 1)
    return [(0, 0, 0)] + [o for o in itertools.product(steps, repeat=3) if o != (0, 0, 0)]


def checkpoint_shift_average(meta: dict[str, Any]) -> str:
    """The offset set a checkpoint's predictions are averaged over by default (``"none"`` if unset).

    Stored as ``meta["shift_average"]`` by whoever cross-validated the recipe with it (the bundled
    model, see the README); ``ermoe-ba predict --shift-average`` overrides it.
    """
    return str(meta.get("shift_average") or "none")


def named_offsets(name: str) -> list[Offset]:
    """The offsets of :data:`OFFSET_SETS` ``name``, ``(0, 0, 0)`` first; a ValueError names the choices.

    Examples
    --------
    >>> named_offsets("axes_1")
    [(0, 0, 0), (-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, 1), (0, 1, 0), (1, 0, 0)]
    """
    if name not in OFFSET_SETS:
        raise ValueError(f"shift average {name!r} is not one of {list(OFFSET_SETS)}")
    keep = OFFSET_SETS[name]
    return [o for o in shift_offsets(2) if keep(o)]


def average_over_shifts(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, offsets: Sequence[Offset]
) -> torch.Tensor:
    """Mean of ``forward`` over copies of the batch ``x`` moved by each of ``offsets``.

    Parameters
    ----------
    forward
        Maps a ``(b, 1, R, A, S)`` batch to per-scan outputs (e.g. standardised ages ``(b,)``).
    x
        The batch, on the model's device.
    offsets
        Whole-voxel offsets (:func:`named_offsets`).
    """
    total = 0
    for offset in offsets:
        total = total + forward(_moved(x, offset))
    return total / len(offsets)


def _moved(x: torch.Tensor, offset: Offset) -> torch.Tensor:
    """The batch ``x`` moved by one whole-voxel ``offset`` (itself for ``(0, 0, 0)``)."""
    if tuple(offset) == (0, 0, 0):
        return x
    return whole_voxel_shift(x, torch.tensor([tuple(offset)] * x.shape[0]))


def shift_averaged_age(model: nn.Module, x: torch.Tensor, offsets: Sequence[Offset]) -> torch.Tensor:
    """Standardised ages ``(b,)`` of ``model`` (output 0), each averaged over the shifted copies.

    An ensemble's members are averaged one by one, as its forward averages them, and members that
    read fixed template voxels (``reads_fixed_voxels``, e.g. the linear ``voxel_ridge`` model) see
    the scan itself only: a shifted copy is a different input to them, and in cross-validation
    shifting made PCA + ridge worse.
    """
    members = list(model.members) if isinstance(model, ModelEnsemble) else [model]
    ages = []
    for member in members:
        age = functools.partial(_standardized_age, member)
        fixed = getattr(member, "reads_fixed_voxels", False)
        ages.append(age(x) if fixed else average_over_shifts(age, x, offsets))
    return torch.stack(ages).mean(dim=0)


def standardized_ages(
    model: nn.Module, x: torch.Tensor, offsets: Sequence[Offset], capture_routing: bool = False
) -> tuple[torch.Tensor, RoutingTrace | None]:
    """Output 0 of ``model`` for the batch ``x``, shift-averaged over ``offsets``, and its routing.

    The routing (when asked for) is that of the scan itself; without routing, an averaged
    prediction runs each copy once (the scan itself is one of them).
    """
    if all(tuple(offset) == (0, 0, 0) for offset in offsets):
        out = model(x, capture_routing=capture_routing)
        return out.output[:, 0].float(), out.routing
    routing = model(x, capture_routing=True).routing if capture_routing else None
    return shift_averaged_age(model, x, offsets), routing


def _standardized_age(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).output[:, 0].float()


def shifted_predictions(
    predict: Callable[[torch.Tensor], np.ndarray],
    volumes: torch.Tensor,
    offsets: Sequence[Offset],
    batch_size: int = 8,
) -> np.ndarray:
    """Predictions ``(n, len(offsets))`` of every scan moved by every offset.

    Parameters
    ----------
    predict
        Maps ``(b, 1, R, A, S)`` float32 volumes to ``(b,)`` predicted ages.
    volumes
        ``(n, 1, R, A, S)`` conformed scans.
    offsets
        Whole-voxel offsets along R, A and S (:func:`shift_offsets`).
    batch_size
        Scans predicted at a time.

    Examples
    --------
    >>> def mean_intensity(x):
    ...     return x.mean(dim=(1, 2, 3, 4)).numpy()
    >>> volumes = torch.zeros(2, 1, 4, 4, 4)
    >>> volumes[:, :, 1:3, 1:3, 1:3] = 1.0
    >>> float(shifted_predictions(mean_intensity, volumes, shift_offsets(1)).std(axis=1).max())  # brain stays inside
    0.0
    """

    def every_offset(x: torch.Tensor) -> np.ndarray:  # (b, len(offsets)): each batch is read and cast once
        return np.stack([np.asarray(predict(_moved(x, offset)), dtype=np.float64) for offset in offsets], axis=1)

    return batched_predictions(every_offset, volumes, batch_size)


def with_shift_average(folds: Sequence[dict[str, Any]], keep: Callable[[Offset], bool]) -> list[dict[str, Any]]:
    """Fold results whose ``predicted`` is the mean over the recorded offsets that ``keep`` accepts.

    Their ``metrics`` and ``corrected`` entries (of the unshifted predictions) are left out.

    Parameters
    ----------
    folds
        CV fold results holding ``shift_average`` (made with ``cv.test_shift_radius > 0``).
    keep
        Which offsets to average, e.g. an entry of :data:`OFFSET_SETS`.

    Raises
    ------
    ValueError
        If a fold has no recorded shifts or ``keep`` accepts none of them.
    """
    out = []
    for fold in folds:
        record = fold.get("shift_average")
        if not record:
            raise ValueError(f"fold {fold.get('fold')} of {fold.get('method')} has no shift-averaged predictions")
        columns = [j for j, o in enumerate(record["offsets"]) if keep(tuple(o))]
        if not columns:
            raise ValueError(f"fold {fold.get('fold')}: no recorded offset is selected")
        predicted = np.asarray(record["per_offset"], dtype=float)[:, columns].mean(axis=1)
        stale = ("metrics", "corrected")  # scored on the unshifted predictions
        out.append({**{k: v for k, v in fold.items() if k not in stale}, "predicted": predicted.tolist()})
    return out
