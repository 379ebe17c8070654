"""Resumable cross-validation of several brain-age methods on the same folds.

Every (method, fold) result is written atomically to ``<out_dir>/<method>/fold<k>.json`` as
soon as it finishes, with the method's settings; a rerun loads the finished ones made with
the same settings and only runs the rest, so a long comparison can be stopped and continued.
The age-bias correction of each fold is fitted here, on the method's calibration scans only,
with the test positions passed as ``held_out`` so that any leak raises. Once a method has every
fold, its test predictions are pooled into ``<out_dir>/<method>/out_of_fold.csv`` (each scan
predicted once, by the model that did not train on it): the calibration table
``ermoe-ba train --calibration`` takes to fit the correction of a model trained on every scan.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ermoe_ba.atomic import write_json_atomic, write_text_atomic
from ermoe_ba.differences import with_missing_keys
from ermoe_ba.training.augment import mirror_left_right
from ermoe_ba.training.bias import AgeBiasCorrection, fit_bias_correction
from ermoe_ba.training.data import VolumeSet
from ermoe_ba.training.methods import Method, settings_defaults
from ermoe_ba.training.metrics import brain_age_metrics, mean_sd, regression_metrics
from ermoe_ba.training.sensitivity import batched_predictions, prediction_shifts
from ermoe_ba.training.shift_average import shift_offsets, shifted_predictions
from ermoe_ba.training.splits import FoldSplit

__all__ = [
    "OUT_OF_FOLD_FILE",
    "cross_validate",
    "made_with_current_settings",
    "out_of_fold_table",
    "run_fold",
    "same_settings",
    "summarize",
]

OUT_OF_FOLD_FILE = "out_of_fold.csv"

log = logging.getLogger(__name__)


def run_fold(
    method: Method, data: VolumeSet, split: FoldSplit, shift_radius: int = 0, state_dir: Path | None = None
) -> dict[str, Any]:
    """Train and test ``method`` on one fold; fit the bias correction without the test scans.

    The result also records how far the test predictions move under the perturbations of
    :mod:`ermoe_ba.training.sensitivity` (``"sensitivity"``), when the method exposes a predictor,
    and with ``shift_radius > 0`` the test predictions of every whole-voxel shift up to that many
    voxels and their average (``"shift_average"``, :mod:`ermoe_ba.training.shift_average`). A
    predictor's test scans are also predicted mirrored left-right (``"mirror_average"``: the
    mirrored predictions and the mean of each scan's two predictions, scored), which costs one
    more pass over the test scans and says how much a model's prediction depends on the side.
    ``state_dir`` goes to the method's ``fit_predict`` (training state of a killed fold).
    """
    start = time.perf_counter()
    out = method.fit_predict(data, split, state_dir)
    ages = data.ages
    calib_pred = np.full(len(data), np.nan)
    calib_pred[out.calibration_index] = out.calibration_pred
    try:
        correction = fit_bias_correction(
            ages, calib_pred, out.calibration_index, held_out=split.test, fitted_on="calibration"
        )
    except ValueError as err:
        if err.__class__.__name__ == "BiasLeakageError":
            raise
        log.warning("fold %d of %s: no bias correction (%s)", split.fold, method.name, err)
        correction = AgeBiasCorrection()
    test_age = ages[split.test]
    corrected = correction.apply(out.test_pred)
    sensitivity = {} if out.predictor is None else prediction_shifts(out.predictor, data.volumes[split.test])
    shift_average = {}
    if shift_radius and out.predictor is not None:
        offsets = shift_offsets(shift_radius)
        per_offset = shifted_predictions(out.predictor, data.volumes[split.test], offsets)
        averaged = per_offset.mean(axis=1)
        shift_average = {
            "radius": shift_radius,
            "metrics": regression_metrics(test_age, averaged),
            "predicted": averaged.tolist(),
            "offsets": offsets,
            "per_offset": per_offset.tolist(),
        }
    mirror_average = {}
    if out.predictor is not None:
        mirrored = batched_predictions(out.predictor, data.volumes[split.test], perturb=mirror_left_right)
        averaged = (np.asarray(out.test_pred, dtype=float) + mirrored) / 2
        mirror_average = {
            "metrics": regression_metrics(test_age, averaged),
            "predicted": averaged.tolist(),
            "predicted_mirrored": mirrored.tolist(),
        }
    return {
        "method": method.name,
        "fold": split.fold,
        "metrics": brain_age_metrics(test_age, out.test_pred, corrected),
        "calibration_metrics": regression_metrics(ages[out.calibration_index], out.calibration_pred),
        "bias_correction": correction.to_dict(),
        "subject_ids": [data.subject_ids[i] for i in split.test],
        "age": test_age.tolist(),
        "predicted": np.asarray(out.test_pred).tolist(),
        "corrected": np.asarray(corrected).tolist(),
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "seconds": time.perf_counter() - start,
        "settings": method.describe(),
        "sensitivity": sensitivity,
        **({"shift_average": shift_average} if shift_average else {}),
        **({"mirror_average": mirror_average} if mirror_average else {}),
        **out.info,
    }


def cross_validate(
    methods: Sequence[Method],
    data: VolumeSet,
    folds: Sequence[FoldSplit],
    out_dir: str | Path,
    resume: bool = True,
    only_folds: Sequence[int] | None = None,
    shift_radius: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Run every method on every fold, fold by fold (skipping finished ones when ``resume``).

    A fold in progress keeps its training state in ``<method>/fold<k>.train-state/`` (removed
    when the fold is written), so with ``resume`` a killed run continues it from its last epoch.

    ``shift_radius`` is passed to :func:`run_fold` (0: no shift-averaged predictions).

    Returns
    -------
    dict
        Method name -> list of fold results (as written to ``<out_dir>/<method>/fold<k>.json``).
    """
    out_dir = Path(out_dir)
    results: dict[str, list[dict[str, Any]]] = {m.name: [] for m in methods}
    for split in folds:  # fold-major: partial runs already compare every method on the same folds
        if only_folds is not None and split.fold not in only_folds:
            continue
        for method in methods:
            path = out_dir / method.name / f"fold{split.fold}.json"
            if resume and path.is_file():
                done = json.loads(path.read_text())
                if made_with_current_settings(done, method):
                    results[method.name].append(done)
                    continue
                log.warning("%s was made with other settings; running it again", path)
            log.info("running %s fold %d", method.name, split.fold)
            state_dir = _fold_state_dir(path, method, resume)
            result = run_fold(method, data, split, shift_radius, state_dir)
            write_json_atomic(path, result)
            shutil.rmtree(state_dir, ignore_errors=True)
            results[method.name].append(result)
            m = result["metrics"]
            log.info(
                "%s fold %d: MAE %.2f, r %.3f (%.0f s)",
                method.name,
                split.fold,
                m["mae"],
                m["r"],
                result["seconds"],
            )
    for name, done in results.items():
        if {r["fold"] for r in done} == {split.fold for split in folds}:
            table = out_of_fold_table(done).to_csv(index=False)
            write_text_atomic(table, out_dir / name / OUT_OF_FOLD_FILE)
    return results


def _fold_state_dir(fold_file: Path, method: Method, resume: bool) -> Path:
    """The fold's training-state folder: kept to continue from only if made with the same settings."""
    state_dir = fold_file.with_name(fold_file.stem + ".train-state")
    settings = state_dir / "settings.json"
    if state_dir.exists() and not (resume and settings.is_file() and made_with_current_settings(
        {"settings": json.loads(settings.read_text())}, method
    )):  # fmt: skip
        log.warning("%s: not continued (other settings or no --resume); starting the fold afresh", state_dir)
        shutil.rmtree(state_dir)
    write_json_atomic(settings, method.describe())
    return state_dir


def out_of_fold_table(fold_results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The test predictions of every fold as one table: ``subject_id, fold, age, predicted_age``.

    With folds that partition the cohort, every scan appears once, predicted by the model that did
    not train on it; :func:`~ermoe_ba.training.bias.bias_correction_from_table` reads this table.
    """
    parts = [
        pd.DataFrame(
            {"subject_id": r["subject_ids"], "fold": r["fold"], "age": r["age"], "predicted_age": r["predicted"]}
        )
        for r in sorted(fold_results, key=lambda r: r["fold"])
    ]
    return pd.concat(parts, ignore_index=True)


def same_settings(
    stored: dict[str, Any] | None, current: dict[str, Any], defaults: dict[str, Any] | None = None
) -> bool:
    """Whether a finished fold was made with the method's current settings (JSON round trip).

    A fold written without settings cannot be shown to match, so it is run again. A key that
    ``stored`` lacks and ``defaults`` has (at any depth) reads as that default: an option added
    after the fold was written, whose default is the behaviour the fold was made with.

    Examples
    --------
    >>> same_settings({"train": {"lr": 1}}, {"train": {"lr": 1, "keep": "best"}}, {"train": {"keep": "best"}})
    True
    >>> same_settings({"train": {"lr": 1}}, {"train": {"lr": 1, "keep": "last"}}, {"train": {"keep": "best"}})
    False
    """
    if stored is None:
        return False
    if defaults:
        stored = with_missing_keys(stored, json.loads(json.dumps(defaults)))
    return stored == json.loads(json.dumps(current))


def made_with_current_settings(result: dict[str, Any], method: Method) -> bool:
    """Whether a fold result on disk was made with ``method``'s current settings (see :func:`same_settings`)."""
    return same_settings(result.get("settings"), method.describe(), settings_defaults(method))


def _load_summary(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean over folds of the per-layer load metrics (MoE methods)."""
    layers = sorted({k for f in folds for k in f.get("load", {})}, key=int)
    out = {}
    for layer in layers:
        entries = [f["load"][layer] for f in folds if layer in f.get("load", {})]
        out[layer] = {
            key: mean_sd([e[key] for e in entries])["mean"]
            for key in ("cv", "normalized_entropy", "gini", "max_over_mean", "dead_experts")
        }
    return out


def _member_summary(folds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For seed ensembles: MAE and r of the individual members (mean over members, then folds)."""
    if not all(f.get("members") for f in folds):
        return None
    per_fold = []
    for f in folds:
        scores = [regression_metrics(np.asarray(f["age"]), np.asarray(m["test_pred"])) for m in f["members"]]
        per_fold.append({k: float(np.mean([s[k] for s in scores])) for k in ("mae", "r")})
    return {k: mean_sd([p[k] for p in per_fold]) for k in ("mae", "r")}


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per method: mean ± sd over folds of MAE, RMSE, r, R², gap slope, corrected MAE; pooled metrics;
    load metrics per MoE layer; training time; prediction shifts and shift- and mirror-averaged
    MAE and r when every fold has them."""
    summary = {}
    for name, folds in results.items():
        if not folds:
            continue
        per = {k: mean_sd([f["metrics"][k] for f in folds]) for k in ("mae", "rmse", "r", "r2", "gap_slope")}
        per["corrected_mae"] = mean_sd([f["metrics"]["corrected"]["mae"] for f in folds])
        per["corrected_gap_slope"] = mean_sd([f["metrics"]["corrected"]["gap_slope"] for f in folds])
        age = np.concatenate([f["age"] for f in folds])
        pooled = regression_metrics(age, np.concatenate([f["predicted"] for f in folds]))
        load = _load_summary(folds)
        members = _member_summary(folds)
        sensitivity = _sensitivity_summary(folds)
        shift_average, mirror_average = (_averaged_summary(folds, key) for key in ("shift_average", "mirror_average"))
        summary[name] = {
            "folds": sorted(f["fold"] for f in folds),
            **per,
            "pooled": pooled,
            "load": load,
            "load_cv_mean": mean_sd([v["cv"] for v in load.values()])["mean"] if load else None,
            "parameters": folds[0].get("parameters"),
            "train_seconds": mean_sd([f.get("train_seconds", float("nan")) for f in folds]),
            **({"single_model": members} if members else {}),
            **({"sensitivity": sensitivity} if sensitivity else {}),
            **({"shift_average": shift_average} if shift_average else {}),
            **({"mirror_average": mirror_average} if mirror_average else {}),
        }
    return summary


def _averaged_summary(folds: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]] | None:
    """Mean ± sd over folds of the MAE and r of test-time averaged predictions ``key`` (None unless
    every fold has them)."""
    if not all(f.get(key) for f in folds):
        return None
    return {metric: mean_sd([f[key]["metrics"][metric] for f in folds]) for metric in ("mae", "r")}


def _sensitivity_summary(folds: list[dict[str, Any]]) -> dict[str, dict[str, float]] | None:
    """Per perturbation, mean over folds of the mean and mean absolute prediction shift (None if a
    fold lacks them: folds written before the measure existed)."""
    if not all(f.get("sensitivity") for f in folds):
        return None
    names = folds[0]["sensitivity"]
    return {
        name: {key: mean_sd([f["sensitivity"][name][key] for f in folds])["mean"] for key in ("mean", "mean_abs")}
        for name in names
    }
