"""``ermoe-ba --help``: every command, grouped, prediction first."""

from __future__ import annotations

from typer.testing import CliRunner

from ermoe_ba.cli.main import app


def test_top_level_help_groups_every_command_with_prediction_first():
    result = CliRunner().invoke(app, ["--help"], terminal_width=100)
    assert result.exit_code == 0
    lines = result.output.splitlines()

    def line_of(text: str) -> int:
        return next(i for i, line in enumerate(lines) if line.replace("│", " ").split()[:1] == [text])

    order = ["predict", "maps", "evaluate", "demo", "preprocess", "merge", "train", "combine", "version"]
    assert [line_of(name) for name in order] == sorted(line_of(name) for name in order)
    headings = [i for i, line in enumerate(lines) if line.startswith("╭─ ")]
    titles = [lines[i].strip("╭─╮ ") for i in headings]
    assert titles == ["Options", "Predict and explain", "Scans and tables", "Train", "About"]
    assert headings[1] < line_of("predict") < headings[2] < line_of("preprocess") < headings[3] < line_of("train")
    assert {command.callback.__name__ for command in app.registered_commands} == set(order)  # none left out
