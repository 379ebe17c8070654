"""Benchmark: CV MAE of models trained with left-right mirroring, plain and mirror-averaged; one JSON line.

    python bench/flip_cv.py [--no-save]

Reads ``probes/flip_augment`` (trained with ``augment.flip_lr``; every fold stores each test
scan's prediction and that of its mirror, ``mirror_average``) and the same methods trained
without mirroring in ``probes/shift_average`` (same folds, recipe, seed and code apart from
``flip_lr``). Per method: MAE trained without mirroring, with mirroring, and with mirroring plus
the mean of each scan's two predictions. Per ensemble (the bundled v7's members and the CNN
hybrid of equal cost, both with the linear PCA + ridge member of ``probes/shift_average``,
which predicts the scan itself): the same three rows. Folds missing from a run are left out of
every row that needs them, so partial runs compare like with like. Paths are relative to
``bench/results``; writes ``bench/results/flip_cv.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _report import emit, fold_scores

from ermoe_ba.training.posthoc_ensemble import average_fold_predictions, load_fold_results

RESULTS = Path(__file__).resolve().parent / "results"
MIRRORED, UNMIRRORED = "probes/flip_augment", "probes/shift_average"
DEEP_METHODS = ("ermoe_whitened", "ermoe_whitened_conv_pool", "sfcn")
ENSEMBLES = {  # the bundled default v7 and the CNN hybrid of equal cost
    "v7_members": ["ermoe_whitened", "ermoe_whitened_conv_pool", "pca_ridge"],
    "sfcn_and_pca_ridge": ["sfcn", "pca_ridge"],
}
LINEAR = "pca_ridge"  # not retrained: the linear member reads fixed template voxels, as bundled


def with_mirror_average(folds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold results whose ``predicted`` is the mean of each test scan's prediction and its mirror's."""
    return [{**f, "predicted": f["mirror_average"]["predicted"]} for f in folds]


def _common_folds(runs: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Each run cut to the folds that all runs finished."""
    common = set.intersection(*({f["fold"] for f in run} for run in runs))
    return [[f for f in run if f["fold"] in common] for run in runs]


def _variants(name: str) -> dict[str, list[dict[str, Any]]]:
    """The three training/test variants of one method (or the linear member, the same in all)."""
    if name == LINEAR:
        plain = load_fold_results(RESULTS / UNMIRRORED / name)
        return {"unmirrored": plain, "mirrored": plain, "mirrored_average": plain}
    mirrored = load_fold_results(RESULTS / MIRRORED / name)
    return {
        "unmirrored": load_fold_results(RESULTS / UNMIRRORED / name),
        "mirrored": mirrored,
        "mirrored_average": with_mirror_average(mirrored),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    result: dict = {"bench": "flip_cv", "mirrored": MIRRORED, "unmirrored": UNMIRRORED, "methods": {}, "ensembles": {}}
    variants = {}
    for name in (*DEEP_METHODS, LINEAR):
        try:
            variants[name] = _variants(name)
        except FileNotFoundError as error:
            result.setdefault("skipped", {})[name] = str(error).replace(f"{RESULTS}/", "")
    for name in DEEP_METHODS:
        if name in variants:
            runs = _common_folds(list(variants[name].values()))
            result["methods"][name] = {
                "folds": [f["fold"] for f in runs[0]],
                **{label: fold_scores(folds) for label, folds in zip(variants[name], runs, strict=True)},
            }
    for name, members in ENSEMBLES.items():
        if not all(m in variants for m in members):
            continue
        labels = list(variants[members[0]])
        runs = _common_folds([variants[m][label] for label in labels for m in members])
        per_label = [runs[i * len(members) : (i + 1) * len(members)] for i in range(len(labels))]
        result["ensembles"][name] = {
            "members": members,
            "folds": [f["fold"] for f in runs[0]],
            **{label: fold_scores(average_fold_predictions(r)) for label, r in zip(labels, per_label, strict=True)},
        }
    emit(result, None if args.no_save else RESULTS / "flip_cv.json")


if __name__ == "__main__":
    main()
