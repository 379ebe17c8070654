"""Imports every command module so its ``@app.command`` decorators run, in the order ``--help`` lists them."""

from __future__ import annotations

import importlib

COMMAND_MODULES = ("predict", "maps", "evaluate", "demo", "preprocess", "merge", "train", "combine")

for _module in COMMAND_MODULES:
    importlib.import_module(f"ermoe_ba.cli.{_module}")
