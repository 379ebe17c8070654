"""Benchmark: CV MAE with test predictions averaged over whole-voxel shifts; prints one JSON line.

    python bench/shift_average_cv.py [--run probes/shift_average] [--no-save]

Reads a CV run made with ``cv.test_shift_radius 2`` (every fold stores each test scan's
prediction at every offset in [-2, 2]^3 voxels), and scores, for every method and for the
hybrid ensembles below, the predictions averaged over each named offset set of
:data:`ermoe_ba.training.shift_average.OFFSET_SETS` ("none" is the plain prediction); in the
ensembles the linear member predicts the scan itself, as the bundled hybrid does
(:func:`ermoe_ba.training.shift_average.shift_averaged_age`). The same
fold models give every row, so differences between offset sets are paired: no retraining noise.
Paths are relative to ``bench/results``; writes ``bench/results/shift_average_cv.json`` and, per
ensemble and offset set (``<ensemble>_<set>``), the pooled out-of-fold predictions in
``bench/results/shift_average_cv_folds/<ensemble>_<set>/out_of_fold.csv`` (the calibration table of
``pipelines/default_model/run.py --combine ... --shift-average SET``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _report import emit, fold_scores

from ermoe_ba.atomic import write_text_atomic
from ermoe_ba.training.cv import OUT_OF_FOLD_FILE, out_of_fold_table
from ermoe_ba.training.posthoc_ensemble import average_fold_predictions, load_fold_results
from ermoe_ba.training.shift_average import OFFSET_SETS, with_shift_average

RESULTS = Path(__file__).resolve().parent / "results"
FOLDS_OUT = RESULTS / "shift_average_cv_folds"
N_FOLDS = 5
# bundled as the linear VoxelLinear model, whose reads_fixed_voxels exempts it from shift averaging
FIXED_VOXEL_METHODS = {"pca_ridge"}
ENSEMBLES = {  # v7, the bundled default, and the CNN hybrid of equal cost
    "v7_members": ["ermoe_whitened", "ermoe_whitened_conv_pool", "pca_ridge"],
    "sfcn_and_pca_ridge": ["sfcn", "pca_ridge"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="probes/shift_average", help="CV run folder under bench/results")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    run = RESULTS / args.run
    methods = {}
    for folder in sorted(p for p in run.iterdir() if p.is_dir()):
        folds = load_fold_results(folder)
        if all(f.get("shift_average") for f in folds):
            methods[folder.name] = folds
    result: dict = {"bench": "shift_average_cv", "run": args.run, "methods": {}, "ensembles": {}}
    for name, folds in methods.items():
        result["methods"][name] = {
            "folds": [f["fold"] for f in folds],
            **{label: fold_scores(with_shift_average(folds, keep)) for label, keep in OFFSET_SETS.items()},
        }
    for name, members in ENSEMBLES.items():
        if not all(m in methods for m in members):
            continue
        for label, keep in OFFSET_SETS.items():
            no_shift = OFFSET_SETS["none"]
            member_folds = [
                with_shift_average(methods[m], no_shift if m in FIXED_VOXEL_METHODS else keep) for m in members
            ]
            folds = average_fold_predictions(member_folds)
            key = f"{name}_{label}"
            result["ensembles"][key] = {"members": members, "shift_average": label, **fold_scores(folds)}
            if len(folds) == N_FOLDS and not args.no_save:
                write_text_atomic(out_of_fold_table(folds).to_csv(index=False), FOLDS_OUT / key / OUT_OF_FOLD_FILE)
    emit(result, None if args.no_save else RESULTS / "shift_average_cv.json")


if __name__ == "__main__":
    main()
