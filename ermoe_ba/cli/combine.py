"""``ermoe-ba combine``: average separately trained checkpoints into one ensemble checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ermoe_ba.cli.main import PANEL_TRAIN, app, usage_errors, writable_file

__all__ = ["combine"]


@app.command(rich_help_panel=PANEL_TRAIN)
def combine(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Two or more checkpoints of one model, trained on the same scans."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Ensemble checkpoint to write (.safetensors or .pt)."),
    calibration: Path | None = typer.Option(
        None,
        "--calibration",
        help="CSV/TSV of the ensemble's held-out predictions (columns age, predicted_age) to fit its stored "
        "bias correction on; without it the ensemble stores none (a member's own correction does not fit it).",
    ),
    shift_average: str = typer.Option(
        "none",
        "--shift-average",
        help="Store this as the ensemble's default shift averaging (none, axes_1, cube_1, even_2, cube_2; README, "
        "'Shift averaging'); fit --calibration on held-out predictions made the same way.",
    ),
) -> None:
    """Combine members trained apart (other cores, machines or GPUs) into one ensemble; prints one JSON line.

    Members may differ in architecture options (e.g. --set stem=conv_pool) and seed, not in model
    name, grid, target scaling or training scans: train seed-diverse members apart with
    --val-fraction 0 --keep last (each seed draws its own validation split otherwise), or use
    ermoe-ba train --seeds N. Exit code 2 on usage errors.
    """
    from ermoe_ba.training.bias import bias_correction_from_table
    from ermoe_ba.training.checkpoint import read_meta
    from ermoe_ba.training.combine import combine_checkpoints

    out = writable_file(out)
    with usage_errors():
        correction = bias_correction_from_table(calibration) if calibration is not None else None
        path = combine_checkpoints(checkpoints, out, correction, shift_average)
    meta = read_meta(path)
    line = {"checkpoint": str(path), "members": meta["ensemble_size"], "bias_correction": meta["bias_correction"]}
    typer.echo(json.dumps(line))
