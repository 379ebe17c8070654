"""Benchmark: conform IXI development scans; print one JSON line of seconds per scan and peak memory.

Stage times come from one process (after one warm-up scan that pays the imports and template
loading); the wall-clock per scan is measured separately with a pool of ``--workers`` processes.
No cache is used, so every scan is registered.

    python bench/preprocess.py --n 10 --workers 2 --save bench/results/preprocess.json
    python bench/preprocess.py --dev-qc bench/results/preprocess_dev_qc.tsv   # all scans, default cache
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
from _report import emit

IXI = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "ixi_hh_2mm_nichart" / "t1"
STAGES = ("load", "bias_correction", "registration", "rest")


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def bench(n: int, workers: int) -> dict:
    from ermoe_ba.data.conform import Conformer, conform_records
    from ermoe_ba.models.config import PreprocessConfig

    scans = sorted(IXI.glob("*.nii.gz"))
    if len(scans) < n + 1:
        sys.exit(f"need {n + 1} scans under {IXI.resolve()}, found {len(scans)}")
    chosen = scans[1:][:: max(1, (len(scans) - 1) // n)][:n]
    config = PreprocessConfig()
    conformer = Conformer(config)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    conformer(scans[0])  # warm-up: imports, template, MONAI reader
    startup = time.perf_counter() - start
    stage = {name: [] for name in STAGES}
    results = []
    for scan in chosen:
        result = conformer(scan)
        results.append(result)
        for name in STAGES:
            stage[name].append(result.timings.get(name, 0.0))
    single = {name: round(float(np.mean(values)), 3) for name, values in stage.items()}
    single["total"] = round(sum(single.values()), 3)
    start = time.perf_counter()
    pooled = list(conform_records(chosen, config, workers=workers, progress=False))
    wall = time.perf_counter() - start
    return {
        "bench": "preprocess",
        "n_scans": n,
        "single_process_seconds_per_scan": single,
        "single_process_startup_seconds": round(startup, 2),
        f"workers{workers}_wall_seconds_per_scan": round(wall / n, 3),
        f"workers{workers}_wall_seconds_total_including_pool_start": round(wall, 2),
        "peak_memory_mb_main_process": round(_peak_mb(resource.RUSAGE_SELF), 1),
        "peak_memory_mb_largest_worker": round(_peak_mb(resource.RUSAGE_CHILDREN), 1),
        "qc_ok": sum(r.status == "ok" for r in results),
        "qc_ok_pooled": sum(r.status == "ok" for r in pooled),
        "qc_score_mean": round(float(np.mean([r.qc_score for r in results])), 4),
        "registration_retries": sum(r.registration.get("attempts", 1) > 1 for r in results),
        "cpu_count": os.cpu_count(),
        # Other jobs on the machine inflate every time; the load average says how much.
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "target": "<= 4 s per scan wall-clock with 2 workers, peak memory <= 1.5 GB",
    }


def dev_qc(table: Path, workers: int) -> dict:
    """Conform every development scan into the default cache and write the QC table."""
    import pandas as pd

    from ermoe_ba.data.cache import default_cache_dir
    from ermoe_ba.data.conform import conform_records
    from ermoe_ba.data.discovery import discover
    from ermoe_ba.models.config import PreprocessConfig

    records = discover([IXI])
    start = time.perf_counter()
    rows = []
    for result in conform_records(records, PreprocessConfig(), default_cache_dir(), workers=workers):
        rows.append(
            {
                "subject_id": result.subject_id,
                "qc_score": None if result.qc_score is None else round(result.qc_score, 4),
                "status": result.status,
                "seconds": round(sum(result.timings.values()), 3),
                "mutual_information": round(result.registration.get("metric", float("nan")), 4),
                "attempts": result.registration.get("attempts"),
                "error": result.error,
            }
        )
    table.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(table, sep="\t", index=False)
    return {
        "bench": "preprocess_dev_qc",
        "n_scans": len(rows),
        "status_counts": frame["status"].value_counts().to_dict(),
        "qc_score_min": float(frame["qc_score"].min()),
        "qc_score_median": float(frame["qc_score"].median()),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "cache_dir": str(default_cache_dir()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="number of scans to time")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save", type=Path, help="also write the JSON line to this file")
    parser.add_argument("--dev-qc", type=Path, help="conform all scans into the default cache; QC TSV here")
    args = parser.parse_args()
    out = dev_qc(args.dev_qc, args.workers) if args.dev_qc else bench(args.n, args.workers)
    emit(out, args.save)


if __name__ == "__main__":
    main()
