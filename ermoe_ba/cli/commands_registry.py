"""Imports every command module so its ``@app.command`` decorators run."""

from __future__ import annotations

from ermoe_ba.cli import (  # noqa: F401
    combine,
    demo,
    evaluate,
    maps,
    merge,
    predict,
    preprocess,
    train,
)
