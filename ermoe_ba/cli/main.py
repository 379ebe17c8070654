"""The ``ermoe-ba`` console command. Commands are thin: parse, call the Python API, exit code.

Heavy imports (torch, monai, nilearn) happen inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import typer

__all__ = ["WORKERS_HELP", "app", "check_folder", "usage_errors", "writable_file", "writable_folder"]

SHIFT_AVERAGE_HELP = (
    "Average each prediction over whole-voxel shifts of the scan: none, axes_1 (7 copies), cube_1 (27), "
    "even_2 (27), cube_2 (125). Default: the model's own setting (README, 'Shift averaging')."
)
WORKERS_HELP = (
    "Parallel conforming processes; 0 = one per CPU core (at most 4). Results do not depend on it: "
    "N4 and registration run on one thread in each process."
)

# --help groups the commands under these headings
PANEL_PREDICT, PANEL_DATA, PANEL_TRAIN, PANEL_ABOUT = "Predict and explain", "Scans and tables", "Train", "About"

app = typer.Typer(
    name="ermoe-ba",
    help="Brain age from T1-weighted MRI with an ERMoE mixture-of-experts transformer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Turn a ValueError or FileNotFoundError raised inside into ``error: <message>`` on stderr and exit code 2.

    Our one-line input errors (``DiscoveryError``, checkpoint, option and table checks) are of
    these kinds; anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _check_can_make(folder: Path, out: Path, option: str) -> None:
    """Raise unless ``folder`` is a folder or could be made: its nearest existing ancestor is a writable folder."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise typer.BadParameter(f"{option} {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{option} {out}: {existing} is not writable")


def writable_file(out: Path, option: str = "--out") -> Path:
    """``out`` checked before any work is done for it: a file name whose folder exists or can be made.

    Raises
    ------
    typer.BadParameter
        ``out`` is a folder, or its folder cannot be created.
    """
    if out.is_dir():
        raise typer.BadParameter(f"{option} {out} is a folder; give a file name inside it")
    _check_can_make(out.parent, out, option)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise typer.BadParameter(f"{option} {out}: cannot create its folder ({err.strerror})") from None
    return out


def check_folder(out: Path, option: str = "--out") -> Path:
    """``out`` checked as an output folder without making it yet.

    Commands check ``--out`` first and make it (:func:`writable_folder`) only once their inputs
    are known to be good, so a run refused for its inputs leaves no empty folder behind.

    Raises
    ------
    typer.BadParameter
        ``out`` is an existing file, sits under a file, or cannot be made for lack of permission.
    """
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{option} {out} is a file; give a folder")
    _check_can_make(out, out, option)
    return out


def writable_folder(out: Path, option: str = "--out") -> Path:
    """``out`` checked by :func:`check_folder` and made (with its parents).

    Raises
    ------
    typer.BadParameter
        ``out`` fails :func:`check_folder`, or it cannot be created.
    """
    check_folder(out, option)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise typer.BadParameter(f"{option} {out}: cannot create it ({err.strerror})") from None
    return out


# Command modules register themselves on import (commands_registry.COMMAND_MODULES sets the order).
from ermoe_ba.cli import commands_registry  # noqa: E402,F401


@app.command(rich_help_panel=PANEL_ABOUT)
def version() -> None:
    """Print the package version."""
    from ermoe_ba import __version__

    typer.echo(__version__)
