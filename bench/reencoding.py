"""Benchmark: how far does a model's prediction move when the same scan is stored differently?

For ``--scans`` development scans spread evenly over the file list (sorted by subject id), each scan is written again
in LPI orientation, with its origin moved by 25 mm, rotated by 10° in its affine and as int16 with
its own scaling (same voxel size), and resampled to 1.5 mm, 1 mm and 1 × 1.2 × 3 mm (the variants
of ``tests/conform_helpers.py``, which the bundled model's re-encoding test checks on one scan).
Every variant goes through the full pipeline (registration included) and is compared with the
original's prediction. Prints one JSON line: per model, the mean and largest absolute shift in
years over the same-voxel-size variants, over the resampled ones, and per variant.
``--unmatched`` also runs every model with ``PreprocessConfig.match_resolution`` off (labelled
``LABEL/unmatched``), ``--shift-average NAME`` with that shift averaging (``LABEL/shift-NAME``).

The resampled copies are interpolated from the 2 mm originals, so they are no sharper than them
in truth; resolution matching blurs them as if they had been acquired at their voxel size, a
little more than they need.

    python bench/reencoding.py --models default v6=/path/to/v6.safetensors [--scans 6] [--unmatched] [--save F]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
from _report import emit

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / ".." / "shared" / "realdata" / "ixi_hh_2mm_nichart" / "t1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default"], help="NAME or LABEL=PATH")
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--unmatched", action="store_true", help="also run without resolution matching")
    parser.add_argument(
        "--shift-average", default=None, help="also run every model with this shift averaging (LABEL/shift-NAME)"
    )
    parser.add_argument("--save", type=Path, default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))  # the variants are the re-encoding test's own
    from conform_helpers import INVARIANT_REENCODINGS, RESAMPLED_REENCODINGS, reencoded_variants

    from ermoe_ba.inference import BrainAgePredictor

    files = sorted(DEV.glob("*.nii.gz"))
    step = max(1, len(files) // args.scans)
    scans = files[step // 2 :: step][: args.scans]
    names = (*INVARIANT_REENCODINGS, *RESAMPLED_REENCODINGS)
    models = dict(m.split("=", 1) if "=" in m else (m, m) for m in args.models)
    predictors = {label: BrainAgePredictor.from_pretrained(path, device="cpu") for label, path in models.items()}
    if args.unmatched:
        for label, path in list(models.items()):
            unmatched = copy.copy(predictors[label])  # shares the loaded model; only the conform config differs
            unmatched.preprocess = dataclasses.replace(unmatched.preprocess, match_resolution=False)
            predictors[f"{label}/unmatched"], models[f"{label}/unmatched"] = unmatched, path
    if args.shift_average:
        for label, path in list(models.items()):
            base = predictors[label]  # the new predictor shares its loaded model and conform settings
            shifted = BrainAgePredictor(base.model, base.meta, device="cpu", shift_average=args.shift_average)
            shifted.preprocess = base.preprocess
            predictors[f"{label}/shift-{args.shift_average}"] = shifted
            models[f"{label}/shift-{args.shift_average}"] = path
    shifts: dict[str, list[list[float]]] = {label: [] for label in models}
    with tempfile.TemporaryDirectory() as tmp:
        for index, scan in enumerate(scans):
            folder = Path(tmp) / str(index)
            folder.mkdir()
            variants = reencoded_variants(scan, folder)
            inputs = [scan, *(variants[name] for name in names)]
            for label, predictor in predictors.items():
                table = predictor.predict_files(inputs, workers=args.workers, progress=False)
                if not (table["status"] == "ok").all():
                    raise SystemExit(f"{scan.name}: {table['error'].tolist()}")
                ages = table["predicted_age"].to_numpy()
                shifts[label].append((ages[1:] - ages[0]).tolist())
    result = {"bench": "reencoding", "scans": [s.name for s in scans], "variants": list(names), "models": {}}
    for label, rows in shifts.items():
        size = np.abs(np.asarray(rows))
        invariant, resampled = np.split(size, [len(INVARIANT_REENCODINGS)], axis=1)
        result["models"][label] = {
            "model": models[label],
            "mean_abs_shift_y": round(float(invariant.mean()), 3),
            "max_abs_shift_y": round(float(invariant.max()), 3),
            "resampled_mean_abs_shift_y": round(float(resampled.mean()), 3),
            "resampled_max_abs_shift_y": round(float(resampled.max()), 3),
            "per_variant_mean_shift_y": dict(zip(names, np.mean(rows, 0).round(3).tolist(), strict=True)),
            "per_variant_mean_abs_shift_y": dict(zip(names, size.mean(0).round(3).tolist(), strict=True)),
            "per_variant_max_abs_shift_y": dict(zip(names, size.max(0).round(3).tolist(), strict=True)),
            "shifts_y": np.round(rows, 3).tolist(),
        }
    emit(result, args.save)


if __name__ == "__main__":
    main()
