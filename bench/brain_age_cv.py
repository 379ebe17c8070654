"""Benchmark: 5-fold CV brain-age comparison (pipelines/brain_age_cv); prints one JSON line.

    python bench/brain_age_cv.py [--out runs/brain_age_cv] [--methods ...] [--folds ...]

Writes bench/results/brain_age_cv.json with the command that made it. Resumable: finished
(method, fold) results in --out are reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from ermoe_ba.training.benchmark import load_pipeline_config, run_cv_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _git_commit() -> str | None:
    """Commit of the code that produced the report (``+dirty`` with uncommitted changes)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        status = ["git", "status", "--porcelain", "--untracked-files=no", "ermoe_ba"]
        dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "pipelines" / "brain_age_cv" / "config.json")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "brain_age_cv_folds")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "brain_age_cv.json")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--folds", nargs="*", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    start = time.perf_counter()
    config = load_pipeline_config(args.config)
    report = run_cv_pipeline(config, args.out, only_methods=args.methods, only_folds=args.folds, workers=args.workers)
    report["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    report["config"] = str(args.config)
    report["git_commit"] = _git_commit()
    report["wall_seconds_this_run"] = time.perf_counter() - start
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1))
    line = {"bench": "brain_age_cv", "complete": report["complete"]}
    for name, m in report["methods"].items():
        line[name] = {
            "mae": round(m["mae"]["mean"], 3),
            "mae_sd": round(m["mae"]["sd"], 3),
            "r": round(m["r"]["mean"], 3),
            "rmse": round(m["rmse"]["mean"], 3),
            "folds": len(m["folds"]),
            **({"load_cv": round(m["load_cv_mean"], 3)} if m.get("load_cv_mean") is not None else {}),
        }
    line["comparison"] = report["comparison"]
    print(json.dumps(line))


if __name__ == "__main__":
    main()
