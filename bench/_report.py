"""Shared ending of every benchmark: record the command, print one JSON line, optionally save it."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any


def command_line() -> str:
    """How this benchmark was invoked, as a shell command from the repository root."""
    script = Path(sys.argv[0])
    shown = f"bench/{script.name}" if script.parent.name == "bench" else str(script)
    return "python " + " ".join(shlex.quote(a) for a in [shown, *sys.argv[1:]])


def emit(result: dict[str, Any], save: Path | None = None) -> str:
    """Add the ``command``, print ``result`` as one JSON line and write it to ``save`` if given."""
    result.setdefault("command", command_line())
    line = json.dumps(result)
    print(line)
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(line + "\n")
    return line
