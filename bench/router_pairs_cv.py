"""Benchmark: whitened ERMoE-ba against its softmax baseline, paired by seed, over CV runs.

    python bench/router_pairs_cv.py [--no-save]

The paper's claim in numbers: the same trunk (SFCN-style stem, recipe v3, the main table's five
folds), once with the whitened eigenbasis router and no auxiliary loss and once with a softmax
top-2 router without a balancing loss, trained with the same seed. Run 1 is the older pair
(``probes/whitened_score``, ``probes/conv_pool_stem``), run 2 the same seed with one later code
version (``probes/shift_average``, ``probes/softmax_conv_pool_rerun``), runs 3 and 4 seeds 2 and 4
(ERMoE-ba from ``probes/equal_cost_seed<k>``, session 15 code; softmax from
``probes/softmax_conv_pool_seed<k>``, session 17 code: a new code version changes every training's
random stream, so these pairs share seed and folds, not their random draws).

For each run: both 5-fold MAEs, the gain ``1 - MAE_ermoe / MAE_softmax``, and the top-k load
CV, normalised entropy and dead experts (< 1 % of slots) of each MoE block, averaged over folds.
Over the runs: mean MAEs and gain, the per-fold MAE differences (softmax minus ERMoE-ba) as mean
and standard error (a lower bound: the folds are shared), and the runs ERMoE-ba wins.
Writes ``bench/results/router_pairs_cv.json``.
"""

from __future__ import annotations

import argparse

import numpy as np
from _report import emit, paired_differences
from ensemble_cv import N_FOLDS, RERUN, RESULTS, STEM, WHITENED

from ermoe_ba.training.posthoc_ensemble import load_fold_results

RUNS: dict[str, dict[str, str]] = {
    "run1_seed0": {"ermoe": f"{WHITENED}/ermoe_whitened_conv_pool", "softmax": f"{STEM}/softmax_conv_pool"},
    "run2_seed0_later_code": {
        "ermoe": f"{RERUN}/ermoe_whitened_conv_pool",
        "softmax": "probes/softmax_conv_pool_rerun/softmax_conv_pool",
    },
    **{
        f"run{index}_seed{seed}": {
            "ermoe": f"probes/equal_cost_seed{seed}/ermoe_whitened_conv_pool",
            "softmax": f"probes/softmax_conv_pool_seed{seed}/softmax_conv_pool",
        }
        for index, seed in ((3, 2), (4, 4))
    },
}
LOAD_KEYS = ("cv", "normalized_entropy", "dead_experts")


def _load_summary(folds: list[dict]) -> dict[str, dict[str, float]]:
    """Per MoE block: each load metric averaged over the folds."""
    blocks = sorted(folds[0]["load"], key=int)
    return {
        block: {key: round(float(np.mean([f["load"][block][key] for f in folds])), 3) for key in LOAD_KEYS}
        for block in blocks
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    result: dict = {"bench": "router_pairs_cv", "members_from": "bench/results", "runs": {}, "skipped": {}}
    differences: list[float] = []
    for run, pair in RUNS.items():
        try:
            folds = {kind: load_fold_results(RESULTS / folder) for kind, folder in pair.items()}
        except FileNotFoundError as error:
            result["skipped"][run] = str(error).replace(f"{RESULTS}/", "")
            continue
        if any([f["fold"] for f in done] != list(range(N_FOLDS)) for done in folds.values()):
            result["skipped"][run] = f"not both methods have all {N_FOLDS} folds yet"
            continue
        fold_mae = {kind: [f["metrics"]["mae"] for f in done] for kind, done in folds.items()}
        mae = {kind: float(np.mean(values)) for kind, values in fold_mae.items()}
        result["runs"][run] = {
            "methods": pair,
            "mae": {kind: round(value, 3) for kind, value in mae.items()},
            "fold_mae": {kind: [round(v, 2) for v in values] for kind, values in fold_mae.items()},
            "gain_percent": round(100 * (1 - mae["ermoe"] / mae["softmax"]), 1),
            "load": {kind: _load_summary(done) for kind, done in folds.items()},
        }
        differences += [s - e for s, e in zip(fold_mae["softmax"], fold_mae["ermoe"], strict=True)]
    runs = list(result["runs"].values())
    if runs:
        mean = {kind: float(np.mean([r["mae"][kind] for r in runs])) for kind in ("ermoe", "softmax")}
        result["over_runs"] = {
            "runs": len(runs),
            "mae": {kind: round(value, 3) for kind, value in mean.items()},
            "gain_percent": round(100 * (1 - mean["ermoe"] / mean["softmax"]), 1),
            "runs_ermoe_better": sum(r["mae"]["ermoe"] < r["mae"]["softmax"] for r in runs),
            "fold_difference_y": paired_differences(differences),
        }
    emit(result, None if args.no_save else RESULTS / "router_pairs_cv.json")


if __name__ == "__main__":
    main()
