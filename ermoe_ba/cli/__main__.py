"""``python -m ermoe_ba.cli`` (and ``torchrun -m ermoe_ba.cli``) runs the ``ermoe-ba`` command."""

from __future__ import annotations

from ermoe_ba.cli.main import app

if __name__ == "__main__":
    app()
