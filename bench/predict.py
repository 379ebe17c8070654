"""Benchmark: end-to-end ``BrainAgePredictor.predict_files`` on IXI scans, with registration.

Each scan count runs in a fresh process with an empty conformed-volume cache, so every scan is
loaded, bias-corrected, registered, resampled and predicted. Prints one JSON line: scans per
minute (wall clock, including process start-up and model loading) and peak memory of the main
process and of the largest preprocessing worker, for each count.

    python bench/predict.py --counts 10 40 --workers 2 --save bench/results/predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import emit

IXI = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "ixi_hh_2mm_nichart" / "t1"


def run_once(n: int, workers: int, model: str, batch_size: int) -> dict:
    """Predict ``n`` scans in this process with an empty cache; return timings and peaks."""
    start = time.perf_counter()
    os.environ["ERMOE_BA_CACHE"] = tempfile.mkdtemp(prefix="ermoe-bench-cache-")
    from ermoe_ba.inference.predictor import BrainAgePredictor

    scans = sorted(IXI.glob("*.nii.gz"))[:n]
    if len(scans) < n:
        sys.exit(f"need {n} scans under {IXI.resolve()}, found {len(scans)}")
    predictor = BrainAgePredictor.from_pretrained(model, device="cpu")
    table = predictor.predict_files(scans, batch_size=batch_size, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    return {
        "scans": n,
        "ok": int((table["status"] == "ok").sum()),
        "seconds": round(seconds, 2),
        "scans_per_minute": round(60.0 * n / seconds, 2),
        "peak_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_mb_largest_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", default="default")
    parser.add_argument("--save", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_once(args.one, args.workers, args.model, args.batch_size)))
        return
    runs = []
    for n in args.counts:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--workers",
            str(args.workers),
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    result = {
        "bench": "predict",
        "workers": args.workers,
        "model": args.model,
        "runs": runs,
        "scans_per_minute_largest": runs[-1]["scans_per_minute"],
        "peak_mb_growth": round(runs[-1]["peak_mb_main"] - runs[0]["peak_mb_main"], 1),
        "target": ">= 20 scans per minute on 2 cores; memory flat in the number of scans",
        "cpu_count": os.cpu_count(),
    }
    emit(result, args.save)


if __name__ == "__main__":
    main()
