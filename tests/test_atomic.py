from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ermoe_ba.atomic import atomic_path, write_json_atomic, write_text_atomic


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = write_text_atomic("old", tmp_path / "x.txt")

    def explode(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_path(target, explode)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_temporary_name_keeps_the_suffix_for_format_by_suffix_writers(tmp_path: Path) -> None:
    seen = []
    out = atomic_path(tmp_path / "sub" / "v.npy", lambda tmp: (seen.append(tmp.name), np.save(tmp, np.arange(3))))
    assert seen[0].endswith("v.npy") and seen[0].startswith(".tmp-")
    assert np.load(out).tolist() == [0, 1, 2]


def test_json_round_trip_with_nan(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "r.json", {"mae": float("nan"), "n": 3})
    data = json.loads(path.read_text())
    assert data["n"] == 3 and np.isnan(data["mae"])


def test_a_private_file_from_the_writer_gets_normal_permissions(tmp_path: Path) -> None:
    import os

    def private(tmp: Path) -> None:
        tmp.write_text("weights")
        os.chmod(tmp, 0o600)

    previous = os.umask(0o022)
    try:
        out = atomic_path(tmp_path / "model.safetensors", private)
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o666 & ~previous


def test_the_data_are_flushed_before_the_rename_and_the_folder_after(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, target) -> None:
        events.append(("replace", str(source)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_path(tmp_path / "table.csv", lambda tmp: tmp.write_text("a,b\n"))
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1] == events[1][1]  # the temporary file itself was flushed, then renamed
    assert events[2][1] == str(tmp_path)  # then the folder, so the rename itself is on disk
    assert (tmp_path / "table.csv").read_text() == "a,b\n"
