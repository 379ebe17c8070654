"""How far a fitted method's predictions move when its test scans are a little blurrier, sharper or shifted.

Cross-validation runs every fold's test scans through :data:`PERTURBATIONS` (changes of
sharpness and sub-voxel position of the size conform itself causes, see
:mod:`ermoe_ba.training.sharpness`) and records the shift of each prediction from the
unperturbed one. A model that reads age from anatomy should barely move; one that reads the
scan's sharpness moves by years (docs/RESULTS.md, "Sharpness"). The measure needs no ages and no
re-registration, so it costs a few seconds per fold and is the same for every method.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ermoe_ba.training.sharpness import change_sharpness, fractional_shift

__all__ = ["PERTURBATIONS", "batched_predictions", "prediction_shifts"]

PERTURBATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "blur": lambda x: change_sharpness(x, 0.25),  # Gaussian, sd 0.5 voxel = 1 mm
    "sharpen": lambda x: change_sharpness(x, -0.25),  # unsharp mask undoing about that much blur
    "half_voxel_shift": lambda x: fractional_shift(x, (0.5, 0.5, 0.5)),  # 1 mm along R, A and S
}


def prediction_shifts(
    predict: Callable[[torch.Tensor], np.ndarray], volumes: torch.Tensor, batch_size: int = 8
) -> dict[str, dict[str, float]]:
    """Per perturbation: mean, mean absolute and largest absolute change of the predicted age.

    Parameters
    ----------
    predict
        Maps ``(b, 1, R, A, S)`` float32 volumes to ``(b,)`` predicted ages.
    volumes
        The scans to perturb, ``(n, 1, R, A, S)``, brain-masked with background 0.
    batch_size
        Volumes perturbed and predicted at a time.
    """
    reference = batched_predictions(predict, volumes, batch_size)
    out = {}
    for name, perturb in PERTURBATIONS.items():
        shift = batched_predictions(predict, volumes, batch_size, perturb) - reference
        out[name] = {
            "mean": float(shift.mean()),
            "mean_abs": float(np.abs(shift).mean()),
            "max_abs": float(np.abs(shift).max()),
        }
    return out


def batched_predictions(
    predict: Callable[[torch.Tensor], np.ndarray],
    volumes: torch.Tensor,
    batch_size: int = 8,
    perturb: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """``predict`` of every volume (``perturb``-ed first if given), ``batch_size`` at a time, as float64.

    ``(n,)`` for a ``predict`` that returns one value per scan, ``(n, m)`` for one returning ``(b, m)``.
    """
    parts = []
    for start in range(0, volumes.shape[0], batch_size):
        x = volumes[start : start + batch_size].float()
        parts.append(np.asarray(predict(perturb(x) if perturb else x), dtype=np.float64))
    return np.concatenate(parts)
