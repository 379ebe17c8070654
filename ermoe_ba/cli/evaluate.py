"""``ermoe-ba evaluate``: score a checkpoint on scans with known ages."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ermoe_ba.cli.main import (
    PANEL_PREDICT,
    SHIFT_AVERAGE_HELP,
    WORKERS_HELP,
    app,
    check_folder,
    usage_errors,
    writable_folder,
)

__all__ = ["evaluate"]


@app.command(rich_help_panel=PANEL_PREDICT)
def evaluate(
    checkpoint: str = typer.Argument(
        ..., help="Checkpoint written by `ermoe-ba train` or `combine`, or a bundled model name (default)."
    ),
    inputs: list[Path] = typer.Argument(..., help="Scans with ages: table, BIDS dataset, folders or files."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for metrics.json, predictions.csv and scatter.png."
    ),
    ages: Path | None = typer.Option(None, "--ages", help="Table of subject_id, age (overrides input ages)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    workers: int = typer.Option(0, "--workers", "-j", min=0, help=WORKERS_HELP),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Conformed-volume cache folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    shift_average: str | None = typer.Option(None, "--shift-average", help=SHIFT_AVERAGE_HELP),
) -> None:
    """MAE, RMSE, Pearson r, R², brain-age-gap slope, raw and bias-corrected; prints one JSON line.

    The bias correction is the one stored in the checkpoint, never refitted on these scans.
    Exit code 2 on usage errors (missing checkpoint, no scans with ages).
    """
    from ermoe_ba.inference.pretrained import resolve_checkpoint
    from ermoe_ba.models.config import PreprocessConfig, check_choice
    from ermoe_ba.training.checkpoint import read_meta
    from ermoe_ba.training.data import load_cohort
    from ermoe_ba.training.distributed import resolve_device
    from ermoe_ba.training.evaluate import evaluate_checkpoint

    with usage_errors():
        check_choice("device", device, ("auto", "cpu", "cuda"))  # before the scans are conformed
        resolve_device(device)
        path = resolve_checkpoint(checkpoint)
        check_folder(out)
        preprocess = PreprocessConfig.from_dict(read_meta(path)["preprocess"])
        data = load_cohort(inputs, ages, preprocess, cache_dir, progress=progress, workers=workers)
        out = writable_folder(out)  # made only once the options and scans are known to be good
        metrics = evaluate_checkpoint(path, data, out, device, batch_size, shift_average)
    typer.echo(json.dumps({k: v for k, v in metrics.items() if k != "bias_correction"}))
