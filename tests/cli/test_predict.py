"""``ermoe-ba predict`` / ``merge`` / ``demo`` through typer's test runner, on real IXI scans."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ermoe_ba.cli.main import app
from ermoe_ba.inference.routing_io import load_routing
from ermoe_ba.inference.table import PREDICTION_COLUMNS, read_table

runner = CliRunner()
GOOD = ["IXI013-HH-1212", "IXI014-HH-1236", "IXI033-HH-1259"]


@pytest.fixture(scope="module")
def scans(ixi_dir, tmp_path_factory) -> Path:
    """Three good IXI scans plus bad inputs: truncated, not an image, 2D, 4D, all zero."""
    folder = tmp_path_factory.mktemp("scans")
    for sid in GOOD:
        shutil.copy(ixi_dir / "t1" / f"{sid}_T1.nii.gz", folder)
    raw = gzip.decompress((folder / f"{GOOD[0]}_T1.nii.gz").read_bytes())
    (folder / "truncated.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3])[:5000])
    (folder / "notes.nii").write_text("not an image")
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((64, 64)).astype(np.float32), np.eye(4)),
        folder / "flat2d.nii.gz",
    )
    nib.save(
        nib.Nifti1Image(np.random.default_rng(1).random((32, 32, 32, 3)).astype(np.float32), np.eye(4)),
        folder / "fmri4d.nii.gz",
    )
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.eye(4)), folder / "zeros.nii.gz")
    return folder


@pytest.fixture(scope="module")
def ages_table(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ages") / "ages.csv"
    pd.DataFrame({"subject_id": [f"{s}_T1" for s in GOOD], "age": [46.71, 34.24, 24.76]}).to_csv(path, index=False)
    return path


def _predict(*args: str):
    return runner.invoke(app, ["predict", *map(str, args)], catch_exceptions=False)


@pytest.mark.slow
def test_bad_inputs_get_error_rows_and_good_scans_get_ages(checkpoint, scans, ages_table, tmp_path):
    out = tmp_path / "pred.csv"
    result = _predict(
        scans,
        "--out",
        out,
        "--model",
        checkpoint,
        "--device",
        "cpu",
        "--ages",
        ages_table,
        "--batch-size",
        "2",
        "--quiet",
    )
    assert result.exit_code == 1
    table = read_table(out)
    assert list(table.columns) == list(PREDICTION_COLUMNS)
    assert len(table) == 8
    by_id = table.set_index("subject_id")
    for sid in GOOD:
        row = by_id.loc[f"{sid}_T1"]
        assert row["status"] == "ok" and np.isfinite(row["predicted_age"]) and row["error"] == ""
        assert row["brain_age_gap"] == pytest.approx(row["predicted_age"] - row["age"], abs=1e-3)
        corrected = (row["predicted_age"] - 25.0) / 0.5
        assert row["brain_age_gap_corrected"] == pytest.approx(corrected - row["age"], abs=1e-3)
    for bad in ["truncated", "notes", "flat2d", "fmri4d", "zeros"]:
        row = by_id.loc[bad]
        assert row["status"] == "error" and pd.isna(row["predicted_age"])
        assert bad in row["error"] and "\n" not in row["error"]
    failures = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(failures) == 5  # one line on stderr per bad file, naming it, even with --quiet
    assert f"note: --ages {ages_table} has no age for 5 of 8 scans" in result.output  # the bad files
    for bad in ["truncated", "notes", "flat2d", "fmri4d", "zeros"]:
        assert sum(f"/{bad}.nii" in line for line in failures) == 1


@pytest.mark.slow
def test_resume_after_a_killed_run_gives_the_same_table(checkpoint, scans, tmp_path, monkeypatch):
    inputs = [scans / f"{s}_T1.nii.gz" for s in GOOD]
    whole = tmp_path / "whole.csv"
    assert _predict(*inputs, "--out", whole, "--model", checkpoint, "--device", "cpu", "-q").exit_code == 0

    from ermoe_ba.inference.predictor import BrainAgePredictor

    real = BrainAgePredictor._predict_batch
    calls = {"n": 0}

    def dies_after_first_batch(self, batch, routing_dir):
        calls["n"] += 1
        if calls["n"] > 1:
            raise SystemError("killed midway")
        return real(self, batch, routing_dir)

    killed = tmp_path / "killed.csv"
    monkeypatch.setattr(BrainAgePredictor, "_predict_batch", dies_after_first_batch)
    with pytest.raises(SystemError, match="killed midway"):
        _predict(*inputs, "--out", killed, "--model", checkpoint, "--device", "cpu", "--batch-size", "1", "-q")
    assert len(read_table(killed)) == 1
    monkeypatch.setattr(BrainAgePredictor, "_predict_batch", real)
    other_way = _predict(*inputs, "--out", killed, "--model", checkpoint, "--device", "cpu", "--resume",
                         "--shift-average", "axes_1")  # fmt: skip
    assert other_way.exit_code == 2 and "made otherwise (shift_average: 'none' there, 'axes_1' now)" in other_way.output
    assert len(read_table(killed)) == 1  # refused before a row was added
    resumed = _predict(*inputs, "--out", killed, "--model", checkpoint, "--device", "cpu", "--resume")
    assert resumed.exit_code == 0
    assert "resuming: 1 of 3" in resumed.output and "replacing" not in resumed.output
    again = _predict(*inputs, "--out", whole, "--model", checkpoint, "--device", "cpu", "-q")
    assert f"replacing the existing table {whole}" in again.output
    pd.testing.assert_frame_equal(read_table(killed), read_table(whole))
    sidecar = json.loads(killed.with_suffix(".json").read_text())  # which model made the ages
    assert sidecar["model_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert sidecar["model"] == str(checkpoint) and sidecar["register"] is True


@pytest.mark.slow
def test_two_parts_merged_equal_one_run(checkpoint, scans, tmp_path):
    inputs = [scans / f"{s}_T1.nii.gz" for s in GOOD]
    whole = tmp_path / "whole.tsv"
    assert _predict(*inputs, "--out", whole, "--model", checkpoint, "--device", "cpu", "-q").exit_code == 0
    parts = []
    for part in range(2):
        path = tmp_path / f"part{part}.tsv"
        args = ["--num-parts", "2", "--part-id", str(part)]
        assert _predict(*inputs, "--out", path, "--model", checkpoint, "--device", "cpu", *args, "-q").exit_code == 0
        parts.append(path)
    assert len(read_table(parts[0])) == 2 and len(read_table(parts[1])) == 1
    merged = tmp_path / "merged.tsv"
    assert runner.invoke(app, ["merge", *map(str, parts), "--out", str(merged)]).exit_code == 0
    pd.testing.assert_frame_equal(read_table(merged), read_table(whole))
    sidecar = json.loads(merged.with_suffix(".json").read_text())
    assert sidecar == json.loads(whole.with_suffix(".json").read_text())  # the provenance of the parts

    args = ["--num-parts", "2", "--part-id", "1", "--shift-average", "axes_1", "-q"]
    assert _predict(*inputs, "--out", parts[1], "--model", checkpoint, "--device", "cpu", *args).exit_code == 0
    mixed = runner.invoke(app, ["merge", *map(str, parts), "--out", str(merged)])
    assert mixed.exit_code == 2
    said = f"{parts[1]}: its rows were made otherwise than those of {parts[0]}"
    assert f"{said} (shift_average: 'none' there, 'axes_1' now)" in mixed.output
    pd.testing.assert_frame_equal(read_table(merged), read_table(whole))  # the earlier merge is left as it was


@pytest.mark.slow
def test_save_routing_writes_a_trace_per_scan(checkpoint, scans, tmp_path):
    routing = tmp_path / "routing"
    scan = scans / f"{GOOD[0]}_T1.nii.gz"
    result = _predict(
        scan,
        "--out",
        tmp_path / "p.csv",
        "--model",
        checkpoint,
        "--device",
        "cpu",
        "--save-routing",
        routing,
        "-q",
    )
    assert result.exit_code == 0
    trace, transform, meta = load_routing(routing / f"{GOOD[0]}_T1.npz")
    assert trace.layer_indices == [1]
    assert trace.grid_size == (5, 6, 5)
    assert meta["preprocess"]["grid_shape"] == [80, 96, 80]
    # the file holds this scan's own routing and conform transform: recompute both independently
    from ermoe_ba.data.cache import default_cache_dir
    from ermoe_ba.data.conform import Conformer
    from ermoe_ba.models import PreprocessConfig
    from ermoe_ba.training.checkpoint import load_checkpoint

    model, saved_meta = load_checkpoint(checkpoint)
    conformed = Conformer(PreprocessConfig.from_dict(saved_meta["preprocess"]), default_cache_dir())(scan)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(conformed.volume)[None, None], capture_routing=True).routing[1]
    assert torch.equal(trace[1].top_k_index, expected.top_k_index)
    torch.testing.assert_close(trace[1].top_k_weight, expected.top_k_weight)
    torch.testing.assert_close(trace[1].scores, expected.scores)
    np.testing.assert_allclose(transform, conformed.transform)


@pytest.mark.slow
def test_no_register_on_scans_already_in_mni_space_with_two_workers(checkpoint, scans, tmp_path):
    from ermoe_ba.data.cache import default_cache_dir
    from ermoe_ba.data.conform import Conformer
    from ermoe_ba.models import PreprocessConfig

    conformer = Conformer(PreprocessConfig(), default_cache_dir())
    for sid in GOOD[1:]:
        result = conformer(scans / f"{sid}_T1.nii.gz")
        nib.save(nib.Nifti1Image(result.volume, result.affine), tmp_path / f"{sid}_mni.nii.gz")
    folder, routing = tmp_path / "results", tmp_path / "routing"
    folder.mkdir()  # --out an existing folder: the table goes inside it
    args = ["--out", folder, "--model", checkpoint, "--device", "cpu", "--no-register", "--workers", "2", "-q"]
    result = _predict(*sorted(tmp_path.glob("*_mni.nii.gz")), *args, "--save-routing", routing)
    assert result.exit_code == 0
    table = read_table(folder / "predictions.csv")
    assert table["status"].tolist() == ["ok", "ok"]
    assert np.isfinite(table["predicted_age"]).all()
    for sid in GOOD[1:]:  # no registration ran: template -> native is exactly the identity (a registration
        _, transform, _ = load_routing(routing / f"{sid}_mni.npz")  # of these scans moves them by up to ~1 %)
        np.testing.assert_array_equal(transform, np.eye(4))


def test_usage_errors_exit_2(checkpoint, dense_checkpoint, tmp_path):
    scan = tmp_path / "x.nii.gz"
    assert _predict(scan, "--device", "tpu").exit_code == 2
    assert _predict(scan, "--num-parts", "2", "--part-id", "2").exit_code == 2
    assert _predict(scan, "--ages", tmp_path / "missing.csv").exit_code == 2
    unknown = _predict(scan, "--model", "no_such_model", "--out", tmp_path / "p.csv")
    assert unknown.exit_code == 2 and "no_such_model" in unknown.output
    assert runner.invoke(app, ["predict", "--batch-size", "0", str(scan)]).exit_code == 2
    spreadsheet = _predict(scan, "--out", tmp_path / "p.xlsx")  # refused before any work, not CSV in disguise
    assert spreadsheet.exit_code == 2 and "p.xlsx" in spreadsheet.output and not (tmp_path / "p.xlsx").exists()
    routing = ["--save-routing", tmp_path / "r", "--out", tmp_path / "d.csv"]
    no_experts = _predict(scan, "--model", dense_checkpoint, *routing)
    assert no_experts.exit_code == 2 and "no expert routing to save" in no_experts.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "d.csv").exists()
    typo = tmp_path / "ages.csv"
    typo.write_text("subject_id,age\nx,forty\n")
    result = _predict(scan, "--model", checkpoint, "--ages", typo, "--out", tmp_path / "p.csv")
    assert result.exit_code == 2 and "age 'forty' is not a number" in result.output
    assert not (tmp_path / "p.csv").exists()


def test_help_lists_every_option():
    text = runner.invoke(app, ["predict", "--help"], terminal_width=200).output
    for option in [
        "--out",
        "--model",
        "--device",
        "--batch-size",
        "--workers",
        "--no-register",
        "--resume",
        "--num-parts",
        "--part-id",
        "--ages",
        "--save-routing",
        "--quiet",
    ]:
        assert option in text


@pytest.mark.slow
def test_torchrun_ranks_split_the_scans_and_rank0_merges(checkpoint, scans, tmp_path):
    import os
    import subprocess
    import sys

    inputs = [str(scans / f"{s}_T1.nii.gz") for s in GOOD]
    single = tmp_path / "single.csv"
    assert _predict(*inputs, "--out", single, "--model", checkpoint, "--device", "cpu", "-q").exit_code == 0
    out = tmp_path / "ddp.csv"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    cmd = [*torchrun, "-m", "ermoe_ba.cli", "predict", *inputs, "--out", str(out), "--model", str(checkpoint)]
    proc = subprocess.run(
        [*cmd, "--device", "cpu", "-q"], env=dict(os.environ), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = [read_table(tmp_path / f"ddp.part{r}of2.csv") for r in range(2)]
    assert sorted(len(p) for p in parts) == [1, 2]
    pd.testing.assert_frame_equal(read_table(out), read_table(single))


@pytest.mark.slow
def test_bids_input_gets_ages_from_participants_and_a_derivatives_folder(checkpoint, scans, tmp_path):
    import json

    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-02" / "ses-a" / "anat").mkdir(parents=True)
    shutil.copy(scans / f"{GOOD[0]}_T1.nii.gz", root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    shutil.copy(scans / f"{GOOD[1]}_T1.nii.gz", root / "sub-02" / "ses-a" / "anat" / "sub-02_ses-a_T1w.nii.gz")
    shutil.copy(scans / f"{GOOD[2]}_T1.nii.gz", root / "sub-02" / "ses-a" / "anat" / "sub-02_ses-a_FLAIR.nii.gz")
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t46.7\nsub-02\t34.2\n")
    out = tmp_path / "results" / "pred.tsv"
    result = _predict(root, "--out", out, "--model", checkpoint, "--device", "cpu", "-q")
    assert result.exit_code == 0
    table = read_table(out)
    assert table["subject_id"].tolist() == ["sub-01", "sub-02_ses-a"]  # FLAIR ignored
    assert table["age"].tolist() == [46.7, 34.2]
    deriv = tmp_path / "results" / "derivatives" / "ermoe-ba"
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "ermoe-ba"
    row = pd.read_csv(deriv / "sub-02" / "ses-a" / "anat" / "sub-02_ses-a_brainage.tsv", sep="\t")
    assert row["predicted_age"].iloc[0] == pytest.approx(table["predicted_age"].iloc[1], abs=1e-3)
    assert (deriv / "sub-01" / "anat" / "sub-01_brainage.json").is_file()
