"""Cache: keys follow content, config and code version; entries are written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ermoe_ba.data import cache
from ermoe_ba.models.config import PreprocessConfig


def test_key_changes_with_content_config_and_code_version(tmp_path: Path, monkeypatch) -> None:
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    config = PreprocessConfig()
    key = cache.cache_key(cache.file_digest(a), config)
    assert key == cache.cache_key(cache.file_digest(a), PreprocessConfig())
    assert key != cache.cache_key(cache.file_digest(b), config)
    assert key != cache.cache_key(cache.file_digest(a), PreprocessConfig(bias_correction=False))
    monkeypatch.setattr(cache, "CONFORM_CODE_VERSION", "conform-test")
    assert key != cache.cache_key(cache.file_digest(a), config)


def test_digest_is_sha256_of_bytes_and_of_folder_contents(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "f").write_bytes(b"abc")
    assert cache.file_digest(tmp_path / "f") == hashlib.sha256(b"abc").hexdigest()
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"x")
    before = cache.file_digest(series)
    (series / "2.dcm").write_bytes(b"y")
    assert cache.file_digest(series) != before


def test_round_trip_and_no_partial_files(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    meta = {"status": "ok", "qc_score": 0.5, "transform": np.eye(4).tolist()}
    cache.save_entry(tmp_path, "k", volume, meta)
    loaded = cache.load_entry(tmp_path, "k")
    assert loaded is not None
    np.testing.assert_array_equal(loaded[0], volume)
    assert loaded[1] == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.json", "k.npy"]
    assert cache.load_entry(tmp_path, "other") is None
    # A volume file without its JSON (a crash mid-write) is not an entry.
    (tmp_path / "k.json").unlink()
    assert cache.load_entry(tmp_path, "k") is None


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ERMOE_BA_CACHE", str(tmp_path / "c"))
    assert cache.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ERMOE_BA_CACHE")
    assert cache.default_cache_dir() == Path.home() / ".cache" / "ermoe-ba" / "conformed"
