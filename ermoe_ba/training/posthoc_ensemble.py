"""Ensembles of finished cross-validation runs: average the test predictions of several methods.

Two models trained on the same fold, each never shown that fold's test scans, can be averaged
scan by scan without any new training and without touching the test ages: the mean is what a
two-member ensemble of those recipes would predict. This measures whether models with different
inductive biases (e.g. two transformer stems, or a CNN and a transformer) make errors that cancel,
before anyone pays for training such an ensemble as one method. The members' runs must use the
same folds (checked by subject ids). Fold results do not keep the calibration predictions, so a
post-hoc ensemble reports uncorrected metrics only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ermoe_ba.training.metrics import mean_sd, regression_metrics

__all__ = ["average_fold_predictions", "load_fold_results", "summarize_ensemble"]


def load_fold_results(folder: str | Path) -> list[dict[str, Any]]:
    """The ``fold<k>.json`` results of one method's CV run, sorted by fold.

    Raises
    ------
    FileNotFoundError
        If ``folder`` holds no fold results.
    """
    folder = Path(folder)
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("fold*.json"))]
    if not results:
        raise FileNotFoundError(f"{folder}: no fold*.json results of a cross-validation run")
    return sorted(results, key=lambda r: r["fold"])


def average_fold_predictions(members: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per fold that every member finished: the members' mean test prediction of each scan.

    Parameters
    ----------
    members
        One list of fold results per member (as :func:`load_fold_results` returns them).

    Returns
    -------
    list of dict
        ``fold``, ``subject_ids``, ``age``, ``predicted`` (member mean) and ``member_mae`` (each
        member's MAE on the fold), for the folds common to all members.

    Raises
    ------
    ValueError
        If fewer than two members are given, no fold is common to all, or two members tested
        different scans on a fold (they did not use the same folds).
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
    by_fold = [{r["fold"]: r for r in member} for member in members]
    common = sorted(set.intersection(*(set(m) for m in by_fold)))
    if not common:
        raise ValueError("the members have no fold in common")
    out = []
    for fold in common:
        first = by_fold[0][fold]
        for index, member in enumerate(by_fold[1:], start=1):
            if member[fold]["subject_ids"] != first["subject_ids"]:
                raise ValueError(f"fold {fold}: member {index} tested other scans than member 0 (not the same folds)")
        age = np.asarray(first["age"], dtype=float)
        predictions = np.array([m[fold]["predicted"] for m in by_fold], dtype=float)
        out.append(
            {
                "fold": fold,
                "subject_ids": list(first["subject_ids"]),
                "age": age.tolist(),
                "predicted": predictions.mean(axis=0).tolist(),
                "member_mae": [float(np.abs(p - age).mean()) for p in predictions],
            }
        )
    return out


def summarize_ensemble(folds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """MAE and r over folds (mean ± sd), pooled metrics, and the members' mean MAE for comparison."""
    per_fold = [regression_metrics(f["age"], f["predicted"]) for f in folds]
    age = np.concatenate([f["age"] for f in folds])
    predicted = np.concatenate([f["predicted"] for f in folds])
    member_mae = np.array([f["member_mae"] for f in folds])  # (folds, members)
    return {
        "folds": [f["fold"] for f in folds],
        "mae": mean_sd([m["mae"] for m in per_fold]),
        "r": mean_sd([m["r"] for m in per_fold]),
        "pooled": regression_metrics(age, predicted),
        "member_mae": [mean_sd(member_mae[:, i]) for i in range(member_mae.shape[1])],
        "fold_mae": [m["mae"] for m in per_fold],
    }
