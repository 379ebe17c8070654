"""The brain-age method comparison as one job: cohort -> folds -> every method -> report.

A JSON config (see ``pipelines/brain_age_cv/config.json``) names the data, the CV settings, the
shared training recipe and the methods. All methods see the same folds, the same conformed
volumes and the same recipe; per-(method, fold) results are saved as they finish, so the job
can be stopped and resumed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ermoe_ba.atomic import write_json_atomic
from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.cv import cross_validate, made_with_current_settings, summarize
from ermoe_ba.training.methods import method_from_dict
from ermoe_ba.training.splits import cv_splits

__all__ = ["compare_to_reference", "cross_validate_finished", "load_pipeline_config", "run_cv_pipeline"]

log = logging.getLogger(__name__)


def load_pipeline_config(path: str | Path) -> dict[str, Any]:
    """Read a pipeline JSON config; data paths in it are resolved against its folder."""
    path = Path(path)
    config = json.loads(path.read_text())
    data = config.setdefault("data", {})
    data["inputs"] = [str((path.parent / p).resolve()) for p in data.get("inputs", [])]
    if data.get("ages"):
        data["ages"] = str((path.parent / data["ages"]).resolve())
    return config


def compare_to_reference(summary: dict[str, dict[str, Any]], reference: str) -> dict[str, Any]:
    """How the reference method does against the best other method (by mean CV MAE).

    ``improvement`` is ``(best_other_mae - reference_mae) / best_other_mae``.
    """
    if reference not in summary:
        return {}
    ref = summary[reference]["mae"]["mean"]
    others = {k: v["mae"]["mean"] for k, v in summary.items() if k != reference}
    out: dict[str, Any] = {"reference": reference, "reference_mae": ref}
    if others:
        best = min(others, key=others.get)
        out.update(best_other=best, best_other_mae=others[best], improvement=(others[best] - ref) / others[best])
    load = summary[reference].get("load_cv_mean")
    if load is not None and "softmax" in summary and summary["softmax"].get("load_cv_mean") is not None:
        out["load_cv_vs_softmax"] = {"reference": load, "softmax": summary["softmax"]["load_cv_mean"]}
    return out


def run_cv_pipeline(
    config: dict[str, Any],
    out_dir: str | Path,
    resume: bool = True,
    only_methods: list[str] | None = None,
    only_folds: list[int] | None = None,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the comparison described by ``config`` and return the report.

    Parameters
    ----------
    config
        As returned by :func:`load_pipeline_config`.
    out_dir
        Folder for ``folds.json`` and ``<method>/fold<k>.json`` files.
    only_methods, only_folds
        Restrict this run to some methods / folds (the report covers whatever is finished).
    workers
        Parallel conforming processes for scans not yet in the cache.
    """
    from ermoe_ba.training.data import load_cohort

    out_dir = Path(out_dir)
    data_cfg = config["data"]
    preprocess = PreprocessConfig.from_dict(config.get("preprocess", {}))
    data = load_cohort(data_cfg["inputs"], data_cfg.get("ages"), preprocess, progress=progress, workers=workers)
    cv = config.get("cv", {})
    folds = cv_splits(
        data.ages,
        data.subject_ids,
        n_splits=cv.get("n_splits", 5),
        val_fraction=cv.get("val_fraction", 0.15),
        seed=cv.get("seed", 0),
        n_bins=cv.get("n_bins", 5),
    )
    fold_file = out_dir / "folds.json"
    fold_record = {"subject_ids": data.subject_ids, "folds": [f.to_dict() for f in folds]}
    if fold_file.is_file() and json.loads(fold_file.read_text()) != fold_record:
        raise ValueError(
            f"{fold_file} holds other folds than this config gives (data or CV settings changed); "
            "use a new output folder or delete the old results"
        )
    write_json_atomic(fold_file, fold_record)
    recipe = TrainConfig.from_dict({**config.get("train", {}), "progress": progress})
    methods = [method_from_dict(m, recipe) for m in config["methods"]]
    if only_methods:
        unknown = set(only_methods) - {m.name for m in methods}
        if unknown:
            raise ValueError(f"unknown method(s) {sorted(unknown)}; the config has {[m.name for m in methods]}")
        methods = [m for m in methods if m.name in only_methods]
    shift_radius = int(cv.get("test_shift_radius", 0))
    results = cross_validate(methods, data, folds, out_dir, resume, only_folds, shift_radius)
    # the report covers every finished fold of every configured method, not only this run's
    all_methods = [method_from_dict(m, recipe) for m in config["methods"]]
    finished = cross_validate_finished(all_methods, out_dir, len(folds))
    summary = summarize(finished)
    ages = data.ages
    return {
        "n_scans": len(data),
        "n_skipped": len(data.skipped),
        "age_mean": float(np.mean(ages)),
        "age_sd": float(np.std(ages, ddof=1)),
        "n_splits": len(folds),
        "methods": summary,
        "settings": {m.name: m.describe() for m in all_methods},
        "comparison": compare_to_reference(summary, config.get("reference", "ermoe")),
        "complete": all(len(finished.get(m.name, [])) == len(folds) for m in all_methods),
        "this_run": {k: len(v) for k, v in results.items()},
    }


def cross_validate_finished(methods: list, out_dir: Path, n_folds: int) -> dict[str, list[dict[str, Any]]]:
    """Load every finished ``<method>/fold<k>.json`` made with the method's current settings."""
    out: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        files = [out_dir / method.name / f"fold{k}.json" for k in range(n_folds)]
        done = [json.loads(f.read_text()) for f in files if f.is_file()]
        out[method.name] = [d for d in done if made_with_current_settings(d, method)]
    return out
