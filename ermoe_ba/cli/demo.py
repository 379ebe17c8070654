"""``ermoe-ba demo``: predict the three bundled IXI scans with the bundled model, offline."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from ermoe_ba.cli.main import PANEL_PREDICT, app
from ermoe_ba.cli.predict import run_predict, table_path

__all__ = ["demo"]


@app.command(rich_help_panel=PANEL_PREDICT)
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the table.")] = Path(
        "demo_predictions.csv"
    ),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Predict the bundled example scans (IXI, CC BY-SA 3.0) and print the table."""
    examples = Path(str(resources.files("ermoe_ba") / "examples"))
    scans = sorted(examples.glob("*.nii.gz"))
    out = table_path(out)
    code = run_predict(scans, out, device=device, ages=examples / "ages.csv", quiet=True, echo_table=True)
    typer.echo(f"table written to {out}")
    raise typer.Exit(code)
