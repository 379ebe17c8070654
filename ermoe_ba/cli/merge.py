"""``ermoe-ba merge``: join the tables of ``--num-parts`` runs into one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ermoe_ba.cli.main import app

__all__ = ["merge"]


@app.command()
def merge(
    parts: Annotated[
        list[Path], typer.Argument(help="Part tables written by predict --num-parts/--part-id.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged table.")] = Path("predictions.csv"),
) -> None:
    """Merge part tables (sorted by subject id and path). Exit 1 when some scans are not ok."""
    from ermoe_ba.inference.table import merge_tables

    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise typer.BadParameter(f"part tables not found: {', '.join(missing)}")
    frame = merge_tables(parts, out)
    typer.echo(f"{len(frame)} scans -> {out}", err=True)
    raise typer.Exit(0 if (frame["status"] == "ok").all() else 1)
