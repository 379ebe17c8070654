"""Imports every command module so its ``@app.command`` decorators run. One line per module."""

from __future__ import annotations
from ermoe_ba.cli import preprocess  # noqa: F401
from ermoe_ba.cli import demo, merge, predict  # noqa: F401
from ermoe_ba.cli import evaluate, train  # noqa: F401
