"""``ermoe-ba preprocess``: conform raw T1 scans to the model grid and write a QC table."""

from __future__ import annotations

from pathlib import Path

import typer

from ermoe_ba.cli.main import PANEL_DATA, WORKERS_HELP, app, check_folder, usage_errors, writable_folder

__all__ = ["preprocess"]

QC_COLUMNS = ("subject_id", "path", "output", "qc_score", "status", "error")


@app.command(rich_help_panel=PANEL_DATA)
def preprocess(
    inputs: list[Path] = typer.Argument(
        ...,
        help="NIfTI/MGZ files, folders (searched recursively), DICOM series folders, BIDS datasets, "
        "or CSV/TSV tables with a path column.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for <subject_id>.nii.gz and qc.tsv."),
    workers: int = typer.Option(0, "--workers", "-j", min=0, help=WORKERS_HELP),
    register: bool = typer.Option(True, "--register/--no-register", help="Affine registration to MNI152."),
    bias_correction: bool = typer.Option(
        True, "--bias-correction/--no-bias-correction", help="N4 bias-field correction."
    ),
    match_resolution: bool = typer.Option(
        True,
        "--match-resolution/--no-match-resolution",
        help="Blur scans finer than the 2 mm grid to its sharpness and fit N4 at a fixed spacing.",
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Conformed-volume cache (default: $ERMOE_BA_CACHE or ~/.cache/ermoe-ba/conformed)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the cache."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Conform raw T1 scans to the model's MNI grid; write DIR/<subject_id>.nii.gz and DIR/qc.tsv.

    Every file is written atomically and qc.tsv after each scan, so a killed run leaves complete
    volumes and their QC rows; a rerun into the same folder updates the rows of its scans and keeps
    the others (and, with the cache on, skips the conform work already done).
    Exit code 0 when every scan is ok, 1 when some failed QC or could not be read, 2 on usage errors.
    """
    import math
    from functools import partial

    import nibabel as nib
    import pandas as pd

    from ermoe_ba.atomic import atomic_path
    from ermoe_ba.data.cache import default_cache_dir
    from ermoe_ba.data.conform import conform_records
    from ermoe_ba.data.discovery import discover
    from ermoe_ba.inference.table import write_table_atomic
    from ermoe_ba.models.config import PreprocessConfig

    check_folder(out)
    with usage_errors():
        records = discover(inputs)
    out = writable_folder(out)
    config = PreprocessConfig(register=register, bias_correction=bias_correction, match_resolution=match_resolution)
    cache = None if no_cache else (cache_dir or default_cache_dir())
    qc_path = out / "qc.tsv"
    earlier = pd.read_csv(qc_path, sep="\t", dtype=str, keep_default_na=False) if qc_path.exists() else None
    kept = {} if earlier is None else {row["subject_id"]: row for row in earlier.to_dict("records")}
    rows = []
    for result in conform_records(records, config, cache_dir=cache, workers=workers, progress=progress):
        output = ""
        if result.volume is not None:
            image = nib.Nifti1Image(result.volume, result.affine)
            output = str(atomic_path(out / f"{result.subject_id}.nii.gz", partial(nib.save, image)))
        if result.status != "ok":
            typer.echo(f"{result.status}: {result.error}", err=True)
        score = result.qc_score
        rows.append(
            {
                "subject_id": result.subject_id,
                "path": str(result.path),
                "output": output,
                "qc_score": "" if score is None or math.isnan(score) else f"{score:.4f}",
                "status": result.status,
                "error": result.error,
            }
        )
        kept[result.subject_id] = rows[-1]
        table = pd.DataFrame([kept[sid] for sid in sorted(kept)], columns=list(QC_COLUMNS))
        write_table_atomic(table, qc_path)
    failed = sum(row["status"] != "ok" for row in rows)
    typer.echo(f"{len(rows) - failed}/{len(rows)} scans ok; QC table: {out / 'qc.tsv'}")
    raise typer.Exit(1 if failed else 0)
