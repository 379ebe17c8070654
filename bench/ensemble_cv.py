"""Benchmark: post-hoc ensembles of finished CV runs (same folds); prints one JSON line.

    python bench/ensemble_cv.py [--ensemble NAME=RUN_DIR,RUN_DIR ...] [--no-save]

Each ensemble averages, scan by scan, the test predictions of its members' fold results
(``<run>/<method>/fold<k>.json``; see :mod:`ermoe_ba.training.posthoc_ensemble`), so it costs no
training. Without ``--ensemble`` it evaluates the default set below: for each deep method of the
main table, a pair of models of equal cost (two stems for the transformers, two seeds for the
CNN), the bundled default's pair and the CNN pair again from runs of one later code version
(``rerun_*``), two mixed pairs, and each equal-cost pair with the PCA + ridge model added (hybrids).
Paths are relative to ``bench/results``. Writes ``bench/results/ensemble_cv.json`` and, for each
ensemble with every fold, its pooled test predictions to
``bench/results/ensemble_cv_folds/<name>/out_of_fold.csv`` (the calibration table
``pipelines/default_model/run.py --all-scans`` fits a bundled ensemble's bias correction on).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _report import emit

from ermoe_ba.atomic import write_text_atomic
from ermoe_ba.training.cv import OUT_OF_FOLD_FILE, out_of_fold_table
from ermoe_ba.training.posthoc_ensemble import average_fold_predictions, load_fold_results, summarize_ensemble

RESULTS = Path(__file__).resolve().parent / "results"
FOLDS_OUT = RESULTS / "ensemble_cv_folds"
N_FOLDS = 5
MAIN, STEM, SFCN_SEED1 = "brain_age_cv_folds", "probes/conv_pool_stem", "probes/sfcn_seed1"
WHITENED, WHITENED_SEED1 = "probes/whitened_score", "probes/whitened_seed1"
WHITENED_CONV_SEED1 = "probes/whitened_conv_seed1"
# the same recipes rerun with one later code version: CPU training is deterministic
# for a given code version, not across versions, so these pairs repeat the comparison with new runs
RERUN, SFCN_SEED1_RERUN = "probes/shift_average", "probes/sfcn_seed1_rerun"
DEFAULT_ENSEMBLES = {
    "ermoe_two_stems": [f"{MAIN}/ermoe", f"{STEM}/ermoe_conv_pool"],
    "ermoe_whitened_two_stems": [f"{MAIN}/ermoe_whitened", f"{WHITENED}/ermoe_whitened_conv_pool"],
    "softmax_two_stems": [f"{MAIN}/softmax", f"{STEM}/softmax_conv_pool"],
    "softmax_lbl_two_stems": [f"{MAIN}/softmax_lbl", f"{STEM}/softmax_lbl_conv_pool"],
    "dense_two_stems": [f"{MAIN}/dense", f"{STEM}/dense_conv_pool"],
    "sfcn_two_seeds": [f"{MAIN}/sfcn", f"{SFCN_SEED1}/sfcn"],
    "ermoe_whitened_conv_pool_two_seeds": [
        f"{WHITENED}/ermoe_whitened_conv_pool",
        f"{WHITENED_SEED1}/ermoe_whitened_conv_pool",
    ],
    "ermoe_whitened_two_seeds": [f"{MAIN}/ermoe_whitened", f"{WHITENED_CONV_SEED1}/ermoe_whitened"],
    "rerun_ermoe_whitened_two_stems": [f"{RERUN}/ermoe_whitened", f"{RERUN}/ermoe_whitened_conv_pool"],
    "rerun_sfcn_two_seeds": [f"{RERUN}/sfcn", f"{SFCN_SEED1_RERUN}/sfcn"],
    "ermoe_and_sfcn": [f"{MAIN}/ermoe", f"{MAIN}/sfcn"],
    "sfcn_and_pca_ridge": [f"{MAIN}/sfcn", f"{MAIN}/pca_ridge"],
}
# hybrids: each equal-cost pair above plus the linear model (seconds to fit);
# ermoe_whitened_two_stems_and_pca_ridge is the bundled default (v7)
DEFAULT_ENSEMBLES.update(
    {
        f"{pair}_and_pca_ridge": [*DEFAULT_ENSEMBLES[pair], f"{MAIN}/pca_ridge"]
        for pair in list(DEFAULT_ENSEMBLES)
        if pair.endswith(("_two_stems", "_two_seeds"))
    }
)


def parse_ensemble(text: str) -> tuple[str, list[str]]:
    """``NAME=DIR,DIR`` -> ``(NAME, [DIR, DIR])``."""
    name, sep, members = text.partition("=")
    if not sep or not name or "," not in members:
        raise argparse.ArgumentTypeError(f"--ensemble {text!r}: expected NAME=RUN_DIR,RUN_DIR[,...]")
    return name, members.split(",")


def _rounded(summary: dict) -> dict:
    return {
        "folds": summary["folds"],
        "mae": round(summary["mae"]["mean"], 3),
        "mae_sd": round(summary["mae"]["sd"], 3),
        "r_pooled": round(summary["pooled"]["r"], 3),
        "member_mae": [round(m["mean"], 3) for m in summary["member_mae"]],
        "fold_mae": [round(v, 2) for v in summary["fold_mae"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ensemble", type=parse_ensemble, action="append", default=None)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    ensembles = dict(args.ensemble) if args.ensemble else DEFAULT_ENSEMBLES
    result: dict = {"bench": "ensemble_cv", "members_from": "bench/results", "ensembles": {}, "skipped": {}}
    for name, members in ensembles.items():
        try:
            runs = [load_fold_results(RESULTS / member) for member in members]
            folds = average_fold_predictions(runs)
        except (FileNotFoundError, ValueError) as error:
            result["skipped"][name] = str(error).replace(f"{RESULTS}/", "")
            continue
        result["ensembles"][name] = {"members": members, **_rounded(summarize_ensemble(folds))}
        if len(folds) == N_FOLDS and not args.no_save:
            write_text_atomic(out_of_fold_table(folds).to_csv(index=False), FOLDS_OUT / name / OUT_OF_FOLD_FILE)
    emit(result, None if args.no_save else RESULTS / "ensemble_cv.json")


if __name__ == "__main__":
    main()
