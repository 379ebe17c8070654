"""Shared ending of every benchmark: record the command, print one JSON line, optionally save it."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ermoe_ba.training.metrics import mean_sd, regression_metrics


def command_line() -> str:
    """How this benchmark was invoked, as a shell command from the repository root."""
    script = Path(sys.argv[0])
    shown = f"bench/{script.name}" if script.parent.name == "bench" else str(script)
    return "python " + " ".join(shlex.quote(a) for a in [shown, *sys.argv[1:]])


def machine() -> dict[str, Any]:
    """The processor a timing ran on: speeds and even speed ratios differ between CPU models.

    One example: the ERMoE/softmax layer ratio of ``moe_layer.py`` measured 0.99-1.01 on one
    2-core AVX-512 machine and 1.06-1.10 on a 2-core AVX2 one with the same code.
    """
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "simd": torch.backends.cpu.get_cpu_capability(), "logical_cpus": os.cpu_count()}


def emit(result: dict[str, Any], save: Path | None = None) -> str:
    """Add the ``command`` and ``machine``, print ``result`` as one JSON line and write it to ``save`` if given."""
    result.setdefault("command", command_line())
    result.setdefault("machine", machine())
    line = json.dumps(result)
    print(line)
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(line + "\n")
    return line


def fold_scores(folds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """MAE over folds (mean, sd, per fold) and pooled r of fold results' ``age`` and ``predicted``."""
    fold_mae = [regression_metrics(f["age"], f["predicted"])["mae"] for f in folds]
    pooled = regression_metrics(
        np.concatenate([f["age"] for f in folds]), np.concatenate([f["predicted"] for f in folds])
    )
    return {
        "mae": round(mean_sd(fold_mae)["mean"], 3),
        "mae_sd": round(mean_sd(fold_mae)["sd"], 3),
        "r_pooled": round(pooled["r"], 3),
        "fold_mae": [round(v, 2) for v in fold_mae],
    }


def paired_differences(differences: Sequence[float]) -> dict[str, Any]:
    """Count, mean and standard error of paired per-fold differences (shared folds: a lower bound)."""
    spread = mean_sd(differences)
    return {
        "pairs": len(differences),
        "mean": round(spread["mean"], 3),
        "standard_error": round(spread["sd"] / math.sqrt(len(differences)), 3),
    }
