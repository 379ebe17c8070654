r"""Train the bundled default model on every development scan and register it in the package.

    python pipelines/default_model/run.py [--cv-config CONFIG --cv-results REPORT --method NAME] [--all-scans]
    python pipelines/default_model/run.py --combine MEMBER.safetensors ... --cv-results REPORT --method NAME

Recipe: method ``--method`` of the CV config ``--cv-config`` (default: ``ermoe`` of
``pipelines/brain_age_cv/config.json``), including its ensemble (``seeds`` or
``member_overrides``: the checkpoint holds every member); the manifest quotes that method's
cross-validated figures from ``--cv-results`` and records the command.
``--all-scans`` trains on every development scan (no validation split; keep-last recipes only)
and fits the stored age-bias correction on the method's out-of-fold predictions from the CV run
(the ``out_of_fold.csv`` the CV writes beside its fold files), instead of on ~19 validation scans.
``--combine`` trains nothing: it averages member checkpoints made with ``--all-scans`` into one
ensemble (:func:`ermoe_ba.training.combine.combine_checkpoints`), its correction fitted on the
ensemble's out-of-fold table that ``bench/ensemble_cv.py`` writes. An existing checkpoint of the
same ``--name`` is replaced only with ``--overwrite`` (the defaults name the bundled model's file).

The shipped model (v7) is the hybrid ``ermoe_whitened_two_stems_and_pca_ridge``: two ERMoE-ba
models with the whitened eigenbasis score that differ in their stem, trained at the same time, one
per core (22 min wall on this 2-core machine), and the PCA + ridge model of the CV table fitted on
the same scans (a ``classical`` method: saved as the linear ``voxel_ridge`` model, seconds), then
combined::

    python pipelines/default_model/run.py --cv-config bench/results/probes/whitened_score/config.json \
        --cv-results bench/results/probes/whitened_score/report.json --method ermoe_whitened --all-scans \
        --name ermoe_whitened --weights-dir runs/default_members --workers 1             # 13 min
    python pipelines/default_model/run.py --cv-config bench/results/probes/whitened_score/config.json \
        --cv-results bench/results/probes/whitened_score/report.json --method ermoe_whitened_conv_pool \
        --all-scans --name ermoe_whitened_conv_pool --weights-dir runs/default_members --workers 1   # 22 min
    python pipelines/default_model/run.py --method pca_ridge --all-scans --name voxel_ridge \
        --weights-dir runs/default_members --workers 1                       # 2 min
    python bench/ensemble_cv.py   # the ensemble's out-of-fold table, from the members' CV runs
    python pipelines/default_model/run.py --combine runs/default_members/ermoe_whitened.safetensors \
        runs/default_members/ermoe_whitened_conv_pool.safetensors runs/default_members/voxel_ridge.safetensors \
        --cv-results bench/results/ensemble_cv.json --method ermoe_whitened_two_stems_and_pca_ridge --overwrite

The previous default v6 is the same with the plain score: members ``ermoe_150`` of
``bench/results/probes/long_training/`` and ``ermoe_conv_pool`` of
``bench/results/probes/conv_pool_stem/`` (same flags, ``--name ermoe`` / ``ermoe_conv_pool``),
combined as ``ermoe_two_stems_and_pca_ridge``.

Check a new model with ``pytest -m slow tests/inference/test_bundled_model.py`` before committing
it: the v2 ensemble and the disjoint-bases model were not shipped because they failed the
re-encoding check there (README, "The model").
Training data: the IXI-HH development set; the weights are therefore CC BY-SA 3.0.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from ermoe_ba.inference.pretrained import register_bundled_model
from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.training.bias import AgeBiasCorrection, bias_correction_from_table
from ermoe_ba.training.checkpoint import read_meta
from ermoe_ba.training.combine import combine_checkpoints
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.cv import OUT_OF_FOLD_FILE
from ermoe_ba.training.data import load_cohort
from ermoe_ba.training.methods import method_from_dict
from ermoe_ba.training.run import train_brain_age
from ermoe_ba.training.voxel_ridge import train_voxel_ridge

REPO = Path(__file__).resolve().parents[2]
DEV_SET = REPO / ".." / "shared" / "realdata" / "ixi_hh_2mm_nichart" / "ages.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv-config", type=Path, default=REPO / "pipelines" / "brain_age_cv" / "config.json")
    parser.add_argument("--cv-results", type=Path, default=REPO / "bench" / "results" / "brain_age_cv.json")
    parser.add_argument("--method", default="ermoe")
    parser.add_argument("--name", default="ermoe_ba_tiny_ixi")
    parser.add_argument("--weights-dir", type=Path, default=REPO / "ermoe_ba" / "weights")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--all-scans",
        action="store_true",
        help="Train on every scan; fit the bias correction on the CV run's out-of-fold predictions",
    )
    parser.add_argument(
        "--register-only", action="store_true", help="Keep the trained checkpoint; refresh its manifest entry"
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="MEMBER",
        help="Train nothing: combine these member checkpoints (each made by this script with --all-scans) "
        "into the bundled ensemble, with the bias correction fitted on --method's out_of_fold.csv beside "
        "--cv-results (e.g. bench/results/ensemble_cv.json and ermoe_two_stems)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an existing checkpoint of that --name in --weights-dir (by default the run stops before "
        "training, so a bare run cannot replace the bundled model)",
    )
    parser.add_argument(
        "--shift-average",
        default="none",
        help="With --combine: the shift averaging stored as the ensemble's default (its out_of_fold.csv must "
        "hold predictions averaged the same way, e.g. bench/results/shift_average_cv.json's)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    checkpoint = args.weights_dir / f"{args.name}.safetensors"
    if checkpoint.exists() and not (args.register_only or args.overwrite):
        raise SystemExit(f"{checkpoint} exists: pass --overwrite to replace it, or another --name / --weights-dir")
    previous: dict = {}  # the manifest entry being refreshed (register-only keeps its training facts)
    if args.combine:
        correction = out_of_fold_correction(args.cv_results, args.method)
        combine_checkpoints(args.combine, checkpoint, correction, args.shift_average)
        meta = read_meta(checkpoint)
        seconds, val_metrics = meta["train_seconds"], {}
    elif args.register_only:
        meta = read_meta(checkpoint)
        manifest = args.weights_dir / "manifest.json"
        previous = json.loads(manifest.read_text())["models"].get(args.name, {}) if manifest.is_file() else {}
        seconds = meta.get("train_seconds", previous.get("train_seconds"))
        val_metrics = meta.get("validation_metrics", {})
    else:
        cv_config = json.loads(args.cv_config.read_text())
        method = next(m for m in cv_config["methods"] if m["name"] == args.method)
        preprocess = PreprocessConfig.from_dict(cv_config.get("preprocess", {}))
        data = load_cohort(DEV_SET, preprocess=preprocess, workers=args.workers, progress=False)
        start = time.perf_counter()
        correction = out_of_fold_correction(args.cv_results, args.method) if args.all_scans else None
        if method.get("kind") == "classical":  # the linear member of a hybrid ensemble, on every scan
            settings = {k: method[k] for k in ("factor", "n_components", "inner_folds") if k in method}
            _, meta, _ = train_voxel_ridge(data, checkpoint, **settings, bias_correction=correction)
            val_metrics: dict = {}
        else:
            # the method's own train settings (e.g. augmentation) over the shared recipe, as in the CV
            recipe = TrainConfig.from_dict({**cv_config["train"], "device": "cpu", "progress": False})
            train = method_from_dict(method, recipe).train
            overrides, seeds = method.get("model_overrides"), method.get("seeds", 1)
            result = train_brain_age(
                data, checkpoint, method["model_name"], overrides, train, seeds=seeds,
                val_fraction=0.0 if args.all_scans else 0.15, bias_correction=correction,
                member_overrides=method.get("member_overrides"),
            )  # fmt: skip
            meta, val_metrics = result.meta, result.val_metrics
        seconds = round(time.perf_counter() - start, 1)
    this_command = "python " + " ".join(shlex.quote(a) for a in ["pipelines/default_model/run.py", *sys.argv[1:]])
    cv = {}
    if args.cv_results.is_file():
        report = json.loads(args.cv_results.read_text())
        sections = (report.get("methods", {}), report.get("ensembles", {}), report)
        cv = next((section[args.method] for section in sections if args.method in section), {})
    details = {
        "architecture": {
            "model_name": meta["model_name"],
            "model_config": meta["model_config"],
            "ensemble_size": meta.get("ensemble_size", 1),
            **{key: meta[key] for key in ("member_model_names", "member_overrides") if key in meta},
        },
        "preprocess": meta["preprocess"],
        "training_data": {
            "source": "IXI-HH development set (2 mm, CBICA/NiChart copy)",
            "n_train": meta["training_data"].get("n_scans"),
            "n_validation": len(meta["training_data"].get("validation_subject_ids", [])),
            "bias_correction": meta.get("bias_correction"),
            "age_range": meta["training_data"].get("age_range"),
        },
        "licence": "CC BY-SA 3.0",
        "attribution": "Data from the IXI dataset (https://brain-development.org/ixi-dataset/), Imperial College "
        "London, EPSRC GR/S21533/02. Weights trained on it are released under CC BY-SA 3.0.",
        "validation_metrics": val_metrics,
        "cross_validated_metrics": cv,
        "train_seconds": seconds,
        "command": previous.get("command", this_command),
    }
    register_bundled_model(checkpoint, args.name, details, default=True, weights_dir=args.weights_dir)
    print(json.dumps({"checkpoint": str(checkpoint), "train_seconds": seconds, **val_metrics}))


def out_of_fold_correction(cv_results: Path, method: str) -> AgeBiasCorrection:
    """Fit the correction on ``method``'s pooled test-fold predictions, the CV's ``out_of_fold.csv``.

    The CV writes that table beside the method's fold files, in ``<report folder>/<method>/``
    (probes) or ``<report stem>_folds/<method>/`` (the main table), once every fold is done.
    """
    candidates = [cv_results.parent / method, cv_results.with_name(f"{cv_results.stem}_folds") / method]
    table = next((c / OUT_OF_FOLD_FILE for c in candidates if (c / OUT_OF_FOLD_FILE).is_file()), None)
    if table is None:
        raise SystemExit(
            f"no {OUT_OF_FOLD_FILE} of {method!r} beside {cv_results}: finish (or rerun) its cross-validation first"
        )
    return bias_correction_from_table(table)


if __name__ == "__main__":
    main()
