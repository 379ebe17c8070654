"""``ermoe-ba predict``: brain age for every scan in INPUTS, written to a table as batches finish."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ermoe_ba.cli.main import PANEL_PREDICT, SHIFT_AVERAGE_HELP, WORKERS_HELP, app, usage_errors, writable_file

if TYPE_CHECKING:
    from ermoe_ba.data.discovery import ScanRecord

__all__ = ["predict", "report_failures", "report_missing_ages", "table_path"]


def _part_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.stem}.part{rank}of{world}{out.suffix}")


def table_path(out: Path) -> Path:
    """``--out`` checked before any work: a folder gets ``predictions.csv`` inside it.

    Raises
    ------
    typer.BadParameter
        For a name that is not .csv/.tsv/.tab (the table is always CSV or TSV text) or a folder
        that cannot be created.
    """
    if out.is_dir():
        out = out / "predictions.csv"
    if out.suffix.lower() not in (".csv", ".tsv", ".tab"):
        raise typer.BadParameter(f"--out {out}: the table is written as CSV or TSV text; name it .csv or .tsv")
    return writable_file(out)


def report_missing_ages(
    records: list[ScanRecord], ages: Path, consequence: str = "their brain-age gaps stay empty"
) -> None:
    """Say on stderr (also with --quiet) for how many scans ``--ages`` had no age, and what that means."""
    missing = [r.subject_id for r in records if r.age is None]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        typer.echo(
            f"note: --ages {ages} has no age for {len(missing)} of {len(records)} scans ({shown}); {consequence}",
            err=True,
        )


def report_failures(rows: list[dict]) -> None:
    """Say on stderr, one line each, why scans of a finished batch got no age (also with --quiet)."""
    for row in rows:
        if row["status"] != "ok":
            typer.echo(f"{row['status']}: {row['error']}", err=True)


def run_predict(
    inputs: list[Path],
    out: Path,
    model: str = "default",
    device: str = "auto",
    batch_size: int = 4,
    workers: int = 1,
    register: bool = True,
    resume: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    ages: Path | None = None,
    save_routing: Path | None = None,
    quiet: bool = False,
    echo_table: bool = False,
    shift_average: str | None = None,
) -> int:
    """Run a prediction job and return the exit code (0 all ok, 1 some not ok)."""
    from ermoe_ba.inference.predictor import BrainAgePredictor
    from ermoe_ba.inference.provenance import check_same_run, run_description, write_run_description
    from ermoe_ba.inference.sharding import distributed_rank, shard
    from ermoe_ba.inference.table import PredictionTable, merge_tables, read_table

    rank, world = distributed_rank()
    if world > 1:
        num_parts, part_id = world, rank
    predictor = BrainAgePredictor.from_pretrained(model, device=device, shift_average=shift_average)
    if save_routing is not None:
        predictor.check_has_experts("save")
    discovered = predictor.discover(inputs, ages)
    if ages is not None and rank == 0:
        report_missing_ages(discovered, ages)
    records = shard(discovered, num_parts, part_id)
    target = _part_path(out, rank, world) if world > 1 else out
    description = run_description(predictor, register)
    if resume:
        check_same_run(target, description)
    elif target.exists():  # always said, also with --quiet: the old table goes
        typer.echo(f"replacing the existing table {target} (--resume continues it instead)", err=True)
    write_run_description(target, description)
    table = PredictionTable(target, resume=resume)
    todo = [r for r in records if not table.done(r.subject_id, r.path)]
    if not quiet and len(todo) < len(records):
        typer.echo(f"resuming: {len(records) - len(todo)} of {len(records)} scans already in {target}", err=True)
    for rows in predictor.iter_batches(
        todo,
        batch_size=batch_size,
        workers=workers,
        register=register,
        routing_dir=save_routing,
        progress=not quiet,
    ):
        table.add(rows)
        report_failures(rows)
    frame = merge_tables([target], target)  # rows sorted by subject id, as the merge of parts
    if world > 1:
        import torch.distributed as dist

        from ermoe_ba.training.distributed import cleanup_distributed

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        if rank == 0:
            merge_tables([_part_path(out, r, world) for r in range(world)], out)
            write_run_description(out, description)
        dist.barrier()
        frame = read_table(out)
        cleanup_distributed()
    bids_ids = {r.subject_id for r in discovered if r.source == "bids"}
    if rank == 0 and bids_ids:
        from ermoe_ba.inference.bids import write_bids_derivatives

        bids_rows = frame[frame["subject_id"].isin(bids_ids)]
        root = write_bids_derivatives(bids_rows, out.parent / "derivatives" / "ermoe-ba", predictor.model_name)
        if not quiet:
            typer.echo(f"BIDS derivatives -> {root}", err=True)
    if echo_table:
        typer.echo(frame.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.2f}"))
    if not quiet:
        counts = frame["status"].value_counts().to_dict()
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        typer.echo(f"{len(frame)} scans ({summary}) -> {out}", err=True)
    return 0 if (frame["status"] == "ok").all() else 1


@app.command(rich_help_panel=PANEL_PREDICT)
def predict(
    inputs: Annotated[
        list[Path], typer.Argument(help="NIfTI files, folders, DICOM series, BIDS roots, CSV/TSV tables.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Predictions table (.csv or .tsv); a folder gets predictions.csv.")
    ] = Path("predictions.csv"),
    model: Annotated[str, typer.Option(help="Bundled model name or checkpoint path.")] = "default",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Scans per model batch.")] = 4,
    workers: Annotated[int, typer.Option("--workers", "-j", min=0, help=WORKERS_HELP)] = 0,
    no_register: Annotated[bool, typer.Option("--no-register", help="Scans are already in MNI space.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Skip scans already in --out.")] = False,
    num_parts: Annotated[int, typer.Option(min=1, help="Split the scans into this many parts...")] = 1,
    part_id: Annotated[int, typer.Option(min=0, help="...and run only this part (0-based).")] = 0,
    ages: Annotated[Path | None, typer.Option(help="Table of subject_id, age to compute brain-age gaps.")] = None,
    save_routing: Annotated[Path | None, typer.Option(help="Folder for per-scan routing traces (.npz).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")] = False,
    shift_average: Annotated[str | None, typer.Option(help=SHIFT_AVERAGE_HELP)] = None,
) -> None:
    """Predict brain age for every T1 scan in INPUTS.

    Exit code 0 when every scan is ok, 1 when some are not (the table is still complete), 2 on a
    usage error. Under torchrun, ranks split the scans and rank 0 merges the tables.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, not {device!r}")
    if part_id >= num_parts:
        raise typer.BadParameter(f"--part-id {part_id} must be smaller than --num-parts {num_parts}")
    if ages is not None and not ages.is_file():
        raise typer.BadParameter(f"--ages {ages}: file does not exist")
    out = table_path(out)
    with usage_errors():
        code = run_predict(
            inputs,
            out,
            model,
            device,
            batch_size,
            workers,
            not no_register,
            resume,
            num_parts,
            part_id,
            ages,
            save_routing,
            quiet,
            shift_average=shift_average,
        )
    raise typer.Exit(code)
