"""Train one brain-age model end to end: split, fit, calibrate the age bias, save a checkpoint.

This is what ``ermoe-ba train`` calls. The validation split (by subject, stratified by age)
serves early stopping and the age-bias correction; neither sees any other data. With
``val_fraction=0`` every scan trains the model (recipes that keep the last epoch only) and the
correction comes from held-out predictions of the same recipe, passed in as ``bias_correction``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ermoe_ba.training.bias import AgeBiasCorrection, fit_bias_correction
from ermoe_ba.training.checkpoint import build_meta, save_checkpoint
from ermoe_ba.training.config import TrainConfig, member_configs, member_model_overrides
from ermoe_ba.training.data import VolumeSet
from ermoe_ba.training.distributed import barrier, is_main_process, rank, world_size
from ermoe_ba.training.loop import FitResult, fit, predict
from ermoe_ba.training.metrics import brain_age_metrics
from ermoe_ba.training.splits import train_val_split

__all__ = ["TrainResult", "check_validation_split", "describe_training_data", "train_brain_age"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of :func:`train_brain_age`."""

    checkpoint: Path | None
    fit: FitResult
    bias_correction: AgeBiasCorrection
    val_metrics: dict[str, Any]
    meta: dict[str, Any]
    model: Any = None  # the trained model (a ModelEnsemble when it has several members)


def check_validation_split(val_fraction: float, keep: str) -> None:
    """Raise ValueError unless ``val_fraction`` is 0 (train on every scan, needs ``keep="last"``) or in (0, 0.5).

    Called by :func:`train_brain_age` and, before any scan is conformed, by ``ermoe-ba train``.
    """
    if val_fraction != 0 and not 0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction={val_fraction} must be 0 (train on every scan) or lie in (0, 0.5)")
    if val_fraction == 0 and keep != "last":
        raise ValueError(
            "val_fraction=0 leaves no validation scans to pick an epoch: it needs keep='last' "
            "(on the command line, use it with --keep last)"
        )


def train_brain_age(
    data: VolumeSet,
    output: str | Path | None,
    model_name: str = "ermoe_ba_tiny",
    model_overrides: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    val_fraction: float = 0.15,
    seeds: int = 1,
    bias_correction: AgeBiasCorrection | None = None,
    member_overrides: Sequence[dict[str, Any]] | None = None,
    state_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``model_name`` on the scans of ``data`` that have an age and save a checkpoint.

    Parameters
    ----------
    data
        Conformed volumes and ages (see :func:`ermoe_ba.training.data.load_cohort`).
    output
        Checkpoint path (``.safetensors`` or ``.pt``); None to skip saving.
    model_name, model_overrides
        Registered model and :class:`~ermoe_ba.models.config.ModelConfig` overrides, e.g.
        ``{"router": "softmax"}``.
    config
        The training recipe.
    val_fraction
        Share of subjects held out for early stopping and the age-bias correction; 0 trains on
        every scan and needs ``config.keep == "last"`` (there is no epoch to pick).
    seeds
        Train this many models on the same split with seeds ``config.seed + 1000 * j`` and
        save them as one :class:`~ermoe_ba.models.ensemble.ModelEnsemble` checkpoint whose
        prediction is their mean (the bias correction and validation metrics are the
        ensemble's).
    bias_correction
        Store this correction instead of fitting one on the validation scans, e.g.
        :func:`~ermoe_ba.training.bias.bias_correction_from_table` of out-of-fold predictions.
        Without it and without validation scans the checkpoint stores the identity.
    member_overrides
        One model-override dict per ensemble member, applied over ``model_overrides`` (see
        :func:`~ermoe_ba.training.config.member_model_overrides`), e.g. ``[{}, {"stem":
        "conv_pool", "stem_width": 8}]`` for an ensemble of two stems; member ``j`` trains with
        seed ``config.seed + 1000 * j``. The checkpoint records every member's architecture.
    state_dir
        Keep each member's training state here (``member<j>.pt``; ``member<j>.rank<r>.pt`` under
        torchrun), rewritten after every epoch, and continue from the states found there: a
        killed run started again with the same arguments ends with the checkpoint an
        uninterrupted run writes (members already finished are not trained again). The folder
        is removed once the checkpoint is saved. None keeps no state.

    Examples
    --------
    >>> result = train_brain_age(load_cohort("ixi/ages.csv"), "model.safetensors")  # doctest: +SKIP
    >>> result.val_metrics["mae"]  # doctest: +SKIP
    """
    import torch

    import ermoe_ba.models.sfcn  # noqa: F401  (registers the CNN peer)
    from ermoe_ba.models import ModelEnsemble, create_model

    cfg = config or TrainConfig()
    overrides = dict(model_overrides or {})
    data = data.with_age()
    check_validation_split(val_fraction, cfg.keep)
    if val_fraction == 0:
        train_idx, val_idx = np.arange(len(data)), np.arange(0)
    else:
        train_idx, val_idx = train_val_split(data.ages, data.subject_ids, val_fraction=val_fraction, seed=cfg.seed)
    variants = member_model_overrides(overrides, member_overrides, seeds)
    recipes = member_configs(cfg, len(variants))
    vol, ages = data.volumes, data.ages
    members, results = [], []
    for j, (member_cfg, variant) in enumerate(zip(recipes, variants, strict=True)):
        torch.manual_seed(member_cfg.seed)
        members.append(create_model(model_name, preprocess=data.preprocess, **variant))
        state = None if state_dir is None else Path(state_dir) / _state_name(j)
        results.append(
            fit(members[-1], vol[train_idx], ages[train_idx], vol[val_idx], ages[val_idx], member_cfg, state)
        )
    model = members[0] if len(members) == 1 else ModelEnsemble(members)
    result = results[0]  # the target scaling is the same for every member (same training scans)
    device = next(model.parameters()).device
    val_pred = np.zeros(0)
    if len(val_idx):
        val_pred, _ = predict(model, vol[val_idx], result.scaler, cfg.eval_batch_size, device)
    correction = bias_correction or _fit_on_validation(ages, val_pred, val_idx)
    if len(val_idx) >= 2:
        val_metrics = brain_age_metrics(ages[val_idx], val_pred, correction.apply(val_pred))
    elif len(val_idx):  # too few validation scans for correlations; report the error alone
        val_metrics = {"n": len(val_idx), "mae": float(np.abs(val_pred - ages[val_idx]).mean())}
    else:
        val_metrics = {"n": 0}
    meta = build_meta(
        model,
        model_name,
        model_overrides=overrides,
        preprocess=data.preprocess,
        target=result.scaler.to_dict(),
        bias_correction=correction.to_dict(),
        training_data=describe_training_data(data, train_idx, val_idx),
        extra={
            "train_config": cfg.to_dict(),
            "best_epoch": result.best_epoch if len(members) == 1 else [r.best_epoch for r in results],
            "validation_metrics": val_metrics,
            "train_seconds": round(sum(r.seconds for r in results), 1),
            "history": result.history,
            **(_ensemble_meta(members, recipes, member_overrides) if len(members) > 1 else {}),
        },
    )
    path = None
    if output is not None and is_main_process():
        path = save_checkpoint(output, model, meta)
    barrier()
    if state_dir is not None and output is not None and is_main_process():
        shutil.rmtree(state_dir, ignore_errors=True)  # the checkpoint holds all a rerun would need
    return TrainResult(path, result, correction, val_metrics, meta, model)


def _state_name(member: int) -> str:
    return f"member{member}.rank{rank()}.pt" if world_size() > 1 else f"member{member}.pt"


def describe_training_data(data: VolumeSet, train_idx: np.ndarray, val_idx: np.ndarray) -> dict[str, Any]:
    """The checkpoint's ``training_data``: the training scans and the validation subjects.

    Checkpoints can be combined only when this agrees, so every trainer writes it through here.
    """
    return {
        **data.subset(train_idx).describe(),
        "validation_subject_ids": [data.subject_ids[i] for i in val_idx],
    }


def _ensemble_meta(members: list, recipes: list[TrainConfig], member_overrides: Sequence[dict] | None) -> dict:
    """Ensemble size and seeds; with member overrides, every member's overrides and config too."""
    meta: dict[str, Any] = {"ensemble_size": len(members), "member_seeds": [r.seed for r in recipes]}
    if member_overrides is not None:
        meta["member_overrides"] = [dict(m) for m in member_overrides]
        meta["member_model_configs"] = [m.config.to_dict() for m in members]
    return meta


def _fit_on_validation(ages: np.ndarray, val_pred: np.ndarray, val_idx: np.ndarray) -> AgeBiasCorrection:
    """The validation scans' correction, or the identity (with a warning) when it cannot be fitted."""
    if not len(val_idx):
        log.warning(
            "no age-bias correction stored: no validation scans to fit it on; pass held-out predictions "
            "with --calibration (e.g. a CV run's <method>/out_of_fold.csv)"
        )
        return AgeBiasCorrection()
    full_pred = np.full(len(ages), np.nan)
    full_pred[val_idx] = val_pred
    try:
        return fit_bias_correction(ages, full_pred, val_idx, fitted_on="validation")
    except ValueError as err:
        log.warning("no age-bias correction stored: %s", err)
        return AgeBiasCorrection()
