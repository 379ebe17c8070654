"""``ermoe-ba merge``: join the tables of ``--num-parts`` runs into one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ermoe_ba.cli.main import PANEL_DATA, app, usage_errors
from ermoe_ba.cli.predict import table_path

__all__ = ["merge"]


@app.command(rich_help_panel=PANEL_DATA)
def merge(
    parts: Annotated[
        list[Path], typer.Argument(help="Part tables written by predict --num-parts/--part-id.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Merged table (.csv or .tsv); a folder gets predictions.csv.")
    ] = Path("predictions.csv"),
) -> None:
    """Merge part tables (sorted by subject id and path). Exit 1 when some scans are not ok.

    The parts' provenance sidecars (``<part>.json``) must agree on the model and options; the
    merged table gets their description as its own sidecar (none if a part has none).
    """
    from ermoe_ba.inference.provenance import merged_run_description, sidecar_path, write_run_description
    from ermoe_ba.inference.table import merge_tables

    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise typer.BadParameter(f"part tables not found: {', '.join(missing)}")
    out = table_path(out)
    with usage_errors():  # a part that is no predictions table stops the merge before anything is written
        description = merged_run_description(parts)
        frame = merge_tables(parts, out)
    if description is not None:
        write_run_description(out, description)
    else:
        sidecar_path(out).unlink(missing_ok=True)  # a sidecar of an earlier table here no longer applies
    typer.echo(f"{len(frame)} scans -> {out}", err=True)
    raise typer.Exit(0 if (frame["status"] == "ok").all() else 1)
