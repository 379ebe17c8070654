"""``ermoe-ba maps``: expert-specialisation maps, atlas-region tables and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ermoe_ba.cli.main import PANEL_PREDICT, WORKERS_HELP, app, check_folder, usage_errors

__all__ = ["maps"]


def _parse_layers(layer: str) -> str | int:
    if layer in ("all", "last"):
        return layer
    try:
        return int(layer)
    except ValueError as exc:
        raise typer.BadParameter(f"--layer must be a block index, 'all' or 'last', not {layer!r}") from exc


def run_maps(
    inputs: list[Path],
    out: Path,
    model: str = "default",
    atlas: list[str] | None = None,
    layer: str | int = "all",
    device: str = "auto",
    ages: Path | None = None,
    batch_size: int = 4,
    workers: int = 1,
    native: bool = True,
    quiet: bool = False,
    resume: bool = False,
) -> int:
    """Predict with routing capture, then write maps, tables and the report. Returns the exit code."""
    from ermoe_ba.cli.predict import report_failures, report_missing_ages
    from ermoe_ba.data.discovery import ScanRecord
    from ermoe_ba.inference.predictor import BrainAgePredictor
    from ermoe_ba.inference.table import read_table
    from ermoe_ba.interpret.scans import map_scans

    def before_any_work(records: list[ScanRecord]) -> None:
        """Notes said once the model, --layer, atlases and scans have passed their checks."""
        earlier = out / "predictions.csv"
        if not resume and earlier.exists():  # always said: the earlier run's subjects leave the cohort
            typer.echo(
                f"replacing the maps in {out}: the {len(read_table(earlier))} scans of the earlier run leave its "
                "tables and cohort maps, their subject folders stay (--resume continues that run instead)",
                err=True,
            )
        if ages is not None:
            report_missing_ages(records, ages, consequence="they are left out of the regional age trends")

    predictor = BrainAgePredictor.from_pretrained(model, device=device)
    result, frame = map_scans(
        predictor,
        inputs,
        out,
        ages=ages,
        atlas=atlas or None,
        layers=layer,
        native=native,
        batch_size=batch_size,
        workers=workers,
        progress=not quiet,
        resume=resume,
        on_batch=report_failures,
        on_discovered=before_any_work,
    )
    if result is None:
        typer.echo("error: no scan could be conformed; see predictions.csv for the reasons", err=True)
        return 1
    for sid, reason in result.errors.items():
        typer.echo(f"{sid}: {reason}", err=True)
    mapped = len(frame) - int((frame["status"] != "ok").sum())
    if not quiet:
        typer.echo(f"{mapped} of {len(frame)} scans mapped -> {result.report}", err=True)
    return 0 if mapped == len(frame) and not result.errors else 1


@app.command(rich_help_panel=PANEL_PREDICT)
def maps(
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI files, folders, DICOM series, BIDS roots, tables.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("ermoe_maps"),
    model: Annotated[str, typer.Option(help="Bundled model name or checkpoint path.")] = "default",
    atlas: Annotated[
        list[str] | None, typer.Option(help="Atlas name or NIfTI path (repeatable); default: tissue + Harvard-Oxford.")
    ] = None,
    layer: Annotated[str, typer.Option(help="MoE block index, 'all' or 'last'.")] = "all",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    ages: Annotated[Path | None, typer.Option(help="Table of subject_id, age (for regional age trends).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    workers: Annotated[int, typer.Option("--workers", "-j", min=0, help=WORKERS_HELP)] = 0,
    no_native: Annotated[bool, typer.Option("--no-native", help="Skip maps in each scan's own space.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out: skip its scans, map them with the new ones.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Map which expert handles which part of the brain, per scan and across the cohort.

    Writes DIR/<subject_id>/*.nii.gz (MNI and native space), DIR/cohort/*.nii.gz,
    DIR/regions.tsv, DIR/nmi.tsv, DIR/predictions.csv and DIR/report.html. With --resume, a
    killed or earlier run in DIR is continued: its scans are not conformed again and the tables,
    cohort maps and report cover them and the new ones.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, not {device!r}")
    chosen = _parse_layers(layer)
    check_folder(out)  # made by map_scans once the scans are found
    with usage_errors():
        from ermoe_ba.interpret.atlases import list_atlases

        for name in atlas or []:
            if not Path(name).exists() and name not in list_atlases():
                raise typer.BadParameter(f"--atlas {name!r}: not a file and not one of {list_atlases()}")
        code = run_maps(
            inputs, out, model, atlas, chosen, device, ages, batch_size, workers, not no_native, quiet, resume
        )
    raise typer.Exit(code)
