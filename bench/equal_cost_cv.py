"""Benchmark: the bundled recipe against the CNN at equal training cost, over independent CV runs.

    python bench/equal_cost_cv.py [--no-save]

Every run trains, on the five folds of the main table and with its recipe, v7's two ERMoE-ba
members (whitened score; the conv and the SFCN-style stem) and two seeds of the SFCN-style CNN:
two trainings each, so the pairs cost about the same. Each pair also gets the PCA + ridge model of
the main table (the hybrid; the ERMoE-ba hybrid is the bundled v7). CPU training is deterministic
for one code version and seed, so a run is a new draw only through its seeds or code version:
run 1 is the first (the main table and its probes), run 2 the same seeds with a later code version
(``probes/shift_average``, ``probes/sfcn_seed1_rerun``), runs 3 and 4 new seeds
(``probes/equal_cost_seed2`` to ``seed5``).

For each run: MAE of both pairs and both hybrids and the gain ``1 - MAE_ermoe / MAE_cnn``. Over
the runs: their mean MAEs and gain, and the hybrids' paired per-fold MAE differences (CNN minus
ERMoE-ba, runs x folds) as mean and standard error. The folds are the same in every run, so the
pairs are not independent across runs and that standard error is a lower bound.
Writes ``bench/results/equal_cost_cv.json``.
"""

from __future__ import annotations

import argparse

from _report import emit, paired_differences
from ensemble_cv import MAIN, N_FOLDS, RERUN, RESULTS, SFCN_SEED1, SFCN_SEED1_RERUN, WHITENED

from ermoe_ba.training.posthoc_ensemble import average_fold_predictions, load_fold_results, summarize_ensemble

LINEAR = f"{MAIN}/pca_ridge"
RUNS: dict[str, dict[str, list[str]]] = {
    "run1": {
        "ermoe": [f"{MAIN}/ermoe_whitened", f"{WHITENED}/ermoe_whitened_conv_pool"],
        "cnn": [f"{MAIN}/sfcn", f"{SFCN_SEED1}/sfcn"],
    },
    "run2": {
        "ermoe": [f"{RERUN}/ermoe_whitened", f"{RERUN}/ermoe_whitened_conv_pool"],
        "cnn": [f"{RERUN}/sfcn", f"{SFCN_SEED1_RERUN}/sfcn"],
    },
    **{
        f"run{index}": {
            "ermoe": [
                f"probes/equal_cost_seed{seed}/ermoe_whitened",
                f"probes/equal_cost_seed{seed}/ermoe_whitened_conv_pool",
            ],
            "cnn": [f"probes/equal_cost_seed{seed}/sfcn", f"probes/equal_cost_seed{seed + 1}/sfcn"],
        }
        for index, seed in ((3, 2), (4, 4))
    },
}


def _ensemble(members: list[str]) -> dict:
    return summarize_ensemble(average_fold_predictions([load_fold_results(RESULTS / m) for m in members]))


def _gain(ermoe: float, cnn: float) -> float:
    return round(100 * (1 - ermoe / cnn), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    result: dict = {"bench": "equal_cost_cv", "members_from": "bench/results", "runs": {}, "skipped": {}}
    fold_differences: list[float] = []
    for run, pairs in RUNS.items():
        try:
            scores = {
                f"{kind}{suffix}": _ensemble(members + extra)
                for kind, members in pairs.items()
                for suffix, extra in (("_pair", []), ("_hybrid", [LINEAR]))
            }
        except (FileNotFoundError, ValueError) as error:
            result["skipped"][run] = str(error).replace(f"{RESULTS}/", "")
            continue
        if any(s["folds"] != list(range(N_FOLDS)) for s in scores.values()):
            result["skipped"][run] = f"not every member has all {N_FOLDS} folds yet"
            continue
        mae = {name: s["mae"]["mean"] for name, s in scores.items()}
        result["runs"][run] = {
            "members": pairs,
            "mae": {name: round(value, 3) for name, value in mae.items()},
            "r_pooled": {name: round(s["pooled"]["r"], 3) for name, s in scores.items()},
            "gain_pair_percent": _gain(mae["ermoe_pair"], mae["cnn_pair"]),
            "gain_hybrid_percent": _gain(mae["ermoe_hybrid"], mae["cnn_hybrid"]),
        }
        fold_differences += [
            cnn - ermoe
            for cnn, ermoe in zip(scores["cnn_hybrid"]["fold_mae"], scores["ermoe_hybrid"]["fold_mae"], strict=True)
        ]
    runs = list(result["runs"].values())
    if runs:
        mean = {name: sum(r["mae"][name] for r in runs) / len(runs) for name in runs[0]["mae"]}
        result["over_runs"] = {
            "runs": len(runs),
            "mae": {name: round(value, 3) for name, value in mean.items()},
            "gain_pair_percent": _gain(mean["ermoe_pair"], mean["cnn_pair"]),
            "gain_hybrid_percent": _gain(mean["ermoe_hybrid"], mean["cnn_hybrid"]),
            "hybrid_fold_difference_y": paired_differences(fold_differences),
        }
    emit(result, None if args.no_save else RESULTS / "equal_cost_cv.json")


if __name__ == "__main__":
    main()
