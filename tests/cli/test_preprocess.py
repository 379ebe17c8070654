"""``ermoe-ba preprocess``: outputs, QC table, exit codes, caching, flags."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ermoe_ba.cli.main import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from conform_helpers import ixi_scans, save_nifti, synthetic_head

runner = CliRunner()
COLUMNS = ["subject_id", "path", "output", "qc_score", "status", "error"]


def _run(*args: str):
    return runner.invoke(app, ["preprocess", *args, "--no-progress"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-cache")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _run(str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o")).exit_code == 2
    assert _run(str(tmp_path)).exit_code == 2  # --out missing
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(str(empty), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "no scans found" in result.output
    assert not (tmp_path / "o").exists()  # a refused run leaves no folder behind
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    result = _run(str(empty), "--out", str(a_file))
    assert result.exit_code == 2 and "is a file" in " ".join(result.output.replace("│", " ").split())
    assert a_file.read_text() == "not a folder"


def test_good_and_bad_scans_table_outputs_and_exit_code(tmp_path: Path, cache: Path) -> None:
    scan = ixi_scans()[0]
    bad = save_nifti(tmp_path / "zero.nii.gz", np.zeros((60, 70, 50), np.float32))
    out = tmp_path / "out"
    result = _run(str(scan), str(bad), "--out", str(out), "--cache-dir", str(cache))
    assert result.exit_code == 1, result.output
    table = pd.read_csv(out / "qc.tsv", sep="\t", keep_default_na=False)
    assert list(table.columns) == COLUMNS
    good, failed = table.to_dict("records")
    assert good["subject_id"] == "IXI013-HH-1212_T1" and good["status"] == "ok" and good["error"] == ""
    assert 0.3 < float(good["qc_score"]) < 0.8
    image = nib.load(good["output"])
    assert Path(good["output"]) == out / "IXI013-HH-1212_T1.nii.gz"
    assert image.shape == (80, 96, 80) and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    np.testing.assert_allclose(image.affine[:3, 3], (-80, -112, -74))
    assert failed["status"] == "error" and failed["output"] == "" and failed["qc_score"] == ""
    assert failed["error"].startswith(f"{bad}: ") and "all zero" in failed["error"]
    assert "all zero" in result.output  # the one-line reason is also printed
    # A rerun into the same folder with only the bad scan updates its row and keeps the good one's.
    assert _run(str(bad), "--out", str(out), "--cache-dir", str(cache)).exit_code == 1
    rerun = pd.read_csv(out / "qc.tsv", sep="\t", keep_default_na=False)
    pd.testing.assert_frame_equal(rerun, table)
    assert not list(out.glob(".tmp*")), "temporary files must not be left behind"
    # Second run: served from the cache, same volume, exit 0 with only good scans.
    again = _run(str(scan), "--out", str(tmp_path / "again"), "--cache-dir", str(cache))
    assert again.exit_code == 0, again.output
    second = nib.load(tmp_path / "again" / "IXI013-HH-1212_T1.nii.gz")
    np.testing.assert_array_equal(second.get_fdata(), image.get_fdata())


def test_no_register_no_bias_correction_on_a_scan_already_in_mni_space(tmp_path: Path) -> None:
    from nilearn.datasets import load_mni152_template

    nib.save(load_mni152_template(resolution=2), tmp_path / "mni.nii.gz")
    out = tmp_path / "out"
    result = _run(
        str(tmp_path / "mni.nii.gz"), "--out", str(out), "--no-register", "--no-bias-correction", "--no-cache"
    )
    assert result.exit_code == 0, result.output
    row = pd.read_csv(out / "qc.tsv", sep="\t").iloc[0]
    assert row["status"] == "ok" and row["qc_score"] > 0.999


def test_match_resolution_flag_reaches_the_conform_config(tmp_path: Path) -> None:
    from nilearn.datasets import load_mni152_template

    from ermoe_ba.data.conform import Conformer
    from ermoe_ba.models.config import PreprocessConfig

    scan = tmp_path / "mni1mm.nii.gz"
    nib.save(load_mni152_template(resolution=1), scan)
    outputs = {}
    for flag, matched in (("--match-resolution", True), ("--no-match-resolution", False)):
        out = tmp_path / flag
        args = ("--out", str(out), "--no-register", "--no-bias-correction", "--no-cache", flag)
        assert _run(str(scan), *args).exit_code == 0
        outputs[flag] = nib.load(out / "mni1mm.nii.gz").get_fdata()
        config = PreprocessConfig(register=False, bias_correction=False, match_resolution=matched)
        np.testing.assert_allclose(outputs[flag], Conformer(config)(scan).volume, atol=1e-6)
    assert np.abs(outputs["--match-resolution"] - outputs["--no-match-resolution"]).max() > 0.1


def test_synthetic_blob_is_not_passed_on_silently(tmp_path: Path) -> None:
    # A head-sized ellipsoid with no anatomy: registration cannot find a brain.
    save_nifti(tmp_path / "blob.nii.gz", synthetic_head((64, 72, 60)) * 10, (3.0, 3.0, 3.0))
    out = tmp_path / "out"
    result = _run(str(tmp_path / "blob.nii.gz"), "--out", str(out), "--no-cache")
    assert result.exit_code == 1
    row = pd.read_csv(out / "qc.tsv", sep="\t").iloc[0]
    assert row["status"] == "qc_fail" and "contrast" in row["error"], row["error"]
