"""Training, evaluation and cross-validation of brain-age models.

Fit loop (CPU or CUDA with bfloat16 autocast, ``torchrun`` DDP), augmentation, subject-level
splits, metrics, the age-bias correction, self-describing checkpoints and a resumable
cross-validation of several methods on the same folds.
"""

from __future__ import annotations

from ermoe_ba.training.augment import AugmentConfig, BatchAugment
from ermoe_ba.training.bias import (
    AgeBiasCorrection,
    BiasLeakageError,
    bias_correction_from_table,
    fit_bias_correction,
)
from ermoe_ba.training.checkpoint import build_meta, load_checkpoint, read_meta, save_checkpoint
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.data import VolumeSet, load_cohort, load_volumes
from ermoe_ba.training.loop import FitResult, TargetScaler, fit, predict
from ermoe_ba.training.metrics import brain_age_metrics, gap_slope, regression_metrics
from ermoe_ba.training.splits import FoldSplit, cv_splits, train_val_split

__all__ = [
    "AgeBiasCorrection",
    "AugmentConfig",
    "BatchAugment",
    "BiasLeakageError",
    "FitResult",
    "FoldSplit",
    "TargetScaler",
    "TrainConfig",
    "VolumeSet",
    "bias_correction_from_table",
    "brain_age_metrics",
    "build_meta",
    "cv_splits",
    "fit",
    "fit_bias_correction",
    "gap_slope",
    "load_checkpoint",
    "load_cohort",
    "load_volumes",
    "predict",
    "read_meta",
    "regression_metrics",
    "save_checkpoint",
    "train_val_split",
]
