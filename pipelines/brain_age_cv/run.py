"""Run (or resume) the brain-age CV comparison described by config.json.

    python pipelines/brain_age_cv/run.py --out runs/brain_age_cv [--methods ermoe sfcn] [--folds 0 1]

Results per method and fold land in ``--out`` as they finish; rerunning skips finished ones and
continues a fold that was killed from its last finished epoch (``<method>/fold<k>.train-state/``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ermoe_ba.atomic import write_json_atomic
from ermoe_ba.training.benchmark import load_pipeline_config, run_cv_pipeline

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=HERE / "config.json")
    parser.add_argument("--out", type=Path, required=True, help="Folder for per-fold results and report.json")
    parser.add_argument("--methods", nargs="*", default=None, help="Only these methods (default: all)")
    parser.add_argument("--folds", nargs="*", type=int, default=None, help="Only these folds (default: all)")
    parser.add_argument("--workers", type=int, default=1, help="Parallel conforming processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = load_pipeline_config(args.config)
    report = run_cv_pipeline(config, args.out, only_methods=args.methods, only_folds=args.folds, workers=args.workers)
    write_json_atomic(args.out / "report.json", report)
    print(json.dumps(report["comparison"]))


if __name__ == "__main__":
    main()
