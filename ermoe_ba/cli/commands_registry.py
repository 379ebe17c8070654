"""Imports every command module so its ``@app.command`` decorators run. One line per module."""

from __future__ import annotations

from ermoe_ba.cli import (  # noqa: F401  # noqa: F401
    demo,
    evaluate,
    merge,
    predict,
    preprocess,
    train,
)
