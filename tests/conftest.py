"""Shared fixtures: the IXI development set and one conformed-volume cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
IXI_DIR = SHARED / "realdata" / "ixi_hh_2mm_nichart"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the conformed-volume cache at a session folder so tests never touch ``~/.cache``.

    Tests that register the same scans share the result, which keeps the suite fast.
    """
    previous = os.environ.get("ERMOE_BA_CACHE")
    os.environ["ERMOE_BA_CACHE"] = str(tmp_path_factory.mktemp("conformed-cache"))
    yield
    if previous is None:
        os.environ.pop("ERMOE_BA_CACHE", None)
    else:
        os.environ["ERMOE_BA_CACHE"] = previous


@pytest.fixture(scope="session")
def ixi_dir() -> Path:
    """The IXI development set folder, or skip when ``shared/`` is not beside the repo."""
    if not (IXI_DIR / "t1").is_dir():
        pytest.skip(f"IXI development set not found at {IXI_DIR.resolve()}")
    return IXI_DIR
