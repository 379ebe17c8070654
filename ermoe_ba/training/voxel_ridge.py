"""Fit the classical member of a hybrid ensemble and save it as a checkpoint.

:func:`train_voxel_ridge` fits PCA + ridge on ~6 mm voxels
(:class:`~ermoe_ba.training.classical.PcaRidgeBrainAge`, penalty by inner CV) on every scan
with an age, turns it into the registered ``voxel_ridge`` module and writes a checkpoint with the
same target scaling and training-data record as :func:`~ermoe_ba.training.run.train_brain_age`
on those scans, so :func:`~ermoe_ba.training.combine.combine_checkpoints` can average it with deep
models trained on them. Fitting takes seconds on a CPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ermoe_ba.training.bias import AgeBiasCorrection
from ermoe_ba.training.checkpoint import build_meta, save_checkpoint
from ermoe_ba.training.classical import PcaRidgeBrainAge, voxel_linear_from_pca_ridge
from ermoe_ba.training.data import VolumeSet
from ermoe_ba.training.loop import TargetScaler
from ermoe_ba.training.run import describe_training_data

__all__ = ["train_voxel_ridge"]


def train_voxel_ridge(
    data: VolumeSet,
    output: str | Path | None,
    factor: int = 3,
    n_components: int | float = 0.95,
    inner_folds: int = 5,
    seed: int = 0,
    bias_correction: AgeBiasCorrection | None = None,
) -> tuple[Path | None, dict[str, Any], Any]:
    """Fit PCA + ridge on the scans of ``data`` that have an age and save it as ``voxel_ridge``.

    Parameters
    ----------
    data
        Conformed volumes and ages.
    output
        Checkpoint path; None to skip saving.
    factor, n_components, inner_folds, seed
        As in :class:`~ermoe_ba.training.classical.PcaRidgeBrainAge` (the CV's ``pca_ridge``);
        with fewer scans than ``inner_folds`` the penalty is chosen by leave-one-out.
    bias_correction
        Correction to store (default: the identity; an ensemble gets its own when combined).

    Returns
    -------
    checkpoint, meta, model
        The path written (or None), the checkpoint metadata and the
        :class:`~ermoe_ba.models.voxel_linear.VoxelLinear` module.
    """
    start = time.perf_counter()
    data = data.with_age()
    scaler = TargetScaler.fit(data.ages)
    if len(data) < 3:
        raise ValueError(f"PCA + ridge needs at least 3 scans with an age, got {len(data)}")
    folds = min(inner_folds, len(data))  # small cohorts: leave-one-out instead of failing
    fitted = PcaRidgeBrainAge(factor, n_components, inner_folds=folds, seed=seed).fit(data.volumes, data.ages)
    model = voxel_linear_from_pca_ridge(fitted, data.preprocess, scaler.mean, scaler.std)
    settings = {"factor": factor, "n_components": n_components, "inner_folds": folds, "seed": seed}
    meta = build_meta(
        model,
        "voxel_ridge",
        model_overrides={"input_pool": factor},
        preprocess=data.preprocess,
        target=scaler.to_dict(),
        bias_correction=(bias_correction or AgeBiasCorrection()).to_dict(),
        training_data=describe_training_data(data, np.arange(len(data)), np.arange(0)),
        extra={
            "train_config": {"kind": "pca_ridge", **settings, "best_alpha": fitted.best_alpha},
            "train_seconds": round(time.perf_counter() - start, 1),
        },
    )
    path = save_checkpoint(output, model, meta) if output is not None else None
    return path, meta, model
