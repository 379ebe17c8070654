"""Benchmark: training and inference cost of every deep method of a CV config, on real scans.

    python bench/train_cost.py [--config pipelines/brain_age_cv/config.json] [--scans 32] [--epochs 4]
        [--repeats 3] [--threads 1] [--save bench/results/train_cost.json]

Each deep method (each member, for an ensemble method) trains with the config's recipe on the
first ``--scans`` development scans with an age for ``--epochs`` epochs (the last weights kept,
no validation set) on ``--threads`` CPU threads, so methods are timed under the same conditions
(the CV runs' own ``train_seconds`` depend on what else ran beside them). The first epoch is
dropped (allocator and BLAS warm-up). Every member trains ``--repeats`` times, the methods
taking turns, so a slow spell of a shared machine hits all of them alike. Prints one JSON line
with, per method: the median over repeats of the median wall seconds per scan and epoch
(optimiser steps plus the per-epoch BatchNorm re-estimation of models that have BatchNorm), the
training time of one CV fold this implies (the mean training-part size of the config's folds,
the config's epochs), test-time
seconds per scan, and the parameters (total, active per token). Classical methods fit in seconds
and are left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from _report import emit

from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.training.benchmark import load_pipeline_config
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.data import load_cohort
from ermoe_ba.training.loop import fit, predict
from ermoe_ba.training.methods import DeepMethod, count_parameters, method_from_dict
from ermoe_ba.training.splits import cv_splits

ROOT = Path(__file__).resolve().parents[1]


def time_member(method: DeepMethod, overrides: dict, data, recipe: TrainConfig) -> dict:
    """Train one member briefly and time its epochs and its test-time forward passes."""
    model = method.build(data, recipe.seed, overrides)
    result = fit(model, data.volumes, data.ages, config=recipe)
    epoch_seconds = float(np.median([record["seconds"] for record in result.history[1:]]))
    start = time.perf_counter()
    predict(model, data.volumes, result.scaler, recipe.eval_batch_size, next(model.parameters()).device)
    inference = (time.perf_counter() - start) / len(data)
    return {
        "seconds_per_scan_epoch": epoch_seconds / len(data),
        "inference_seconds_per_scan": inference,
        "parameters": count_parameters(model),
    }


def summarize(runs: list[dict], fold_scan_epochs: float) -> dict:
    """Medians over the repeats of one member, and the training time of a CV fold they imply."""
    per_scan_epoch = float(np.median([r["seconds_per_scan_epoch"] for r in runs]))
    return {
        "seconds_per_scan_epoch": round(per_scan_epoch, 4),
        "repeats": [round(r["seconds_per_scan_epoch"], 4) for r in runs],
        "fold_training_minutes": round(per_scan_epoch * fold_scan_epochs / 60, 1),
        "inference_seconds_per_scan": round(float(np.median([r["inference_seconds_per_scan"] for r in runs])), 4),
        "parameters": runs[0]["parameters"],
    }


def mean_training_scans(ages: np.ndarray, subject_ids: list[str], cv: dict) -> float:
    """Mean size of the training part of the config's CV folds (the scans a fold trains on)."""
    folds = cv_splits(ages, subject_ids, **cv)
    return float(np.mean([len(fold.train) for fold in folds]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "pipelines" / "brain_age_cv" / "config.json")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (default: every deep one)")
    parser.add_argument("--scans", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per member; the first is not timed")
    parser.add_argument("--repeats", type=int, default=3, help="trainings per member, the methods taking turns")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", type=Path, default=None)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not timed)")
    torch.set_num_threads(args.threads)
    config = load_pipeline_config(args.config)
    shared = TrainConfig.from_dict(config.get("train", {}))
    methods = [method_from_dict(spec, shared) for spec in config["methods"]]
    methods = [m for m in methods if isinstance(m, DeepMethod) and (args.methods is None or m.name in args.methods)]
    if not methods:
        parser.error(f"no deep method of {args.config} matches {args.methods}")
    data = config["data"]
    preprocess = PreprocessConfig.from_dict(config.get("preprocess", {}))
    cohort = load_cohort(data["inputs"], data.get("ages"), preprocess, progress=False)
    fold_scans = mean_training_scans(cohort.ages, cohort.subject_ids, config.get("cv", {}))
    subset = cohort.subset(np.arange(min(args.scans, len(cohort))))
    result: dict = {"bench": "train_cost", "config": str(args.config), "scans": len(subset), "threads": args.threads}
    recipes = {
        m.name: dataclasses.replace(
            m.train, epochs=args.epochs, patience=0, keep="last", progress=False, num_threads=args.threads
        )
        for m in methods
    }
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeats):
        for method in methods:
            for j, variant in enumerate(method.variants):
                runs.setdefault((method.name, j), []).append(time_member(method, variant, subset, recipes[method.name]))
    for method in methods:
        scan_epochs = fold_scans * method.train.epochs
        members = [summarize(runs[method.name, j], scan_epochs) for j in range(len(method.variants))]
        result[method.name] = members[0] if len(members) == 1 else {"members": members}
    emit(result, args.save)


if __name__ == "__main__":
    main()
