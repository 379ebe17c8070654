"""``ermoe-ba maps`` end to end on two real scans with a small checkpoint."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ermoe_ba.cli.main import app
from ermoe_ba.data.cache import default_cache_dir
from ermoe_ba.data.conform import Conformer
from ermoe_ba.interpret import expert_label_img
from ermoe_ba.models import PreprocessConfig
from ermoe_ba.training.checkpoint import load_checkpoint, save_checkpoint

runner = CliRunner()
_MNI_CORNER = np.array([[0, 0, 0, -100], [0, 0, 0, -130], [0, 0, 0, -80], [0, 0, 0, 0]], float)


@pytest.mark.slow
def test_maps_writes_subject_cohort_native_maps_tables_and_report(checkpoint, ixi_dir, tmp_path):
    scans = [ixi_dir / "t1" / f"{sid}_T1.nii.gz" for sid in ("IXI013-HH-1212", "IXI014-HH-1236")]
    out = tmp_path / "maps"
    ages = tmp_path / "ages.csv"
    ages.write_text("subject_id,age\nIXI013-HH-1212_T1,30.5\n")
    args = ["maps", *map(str, scans), "--out", str(out), "--model", str(checkpoint), "--device", "cpu"]
    args += ["--ages", str(ages)]
    result = runner.invoke(app, [*args, "--atlas", "tissue", "--layer", "1", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"note: --ages {ages} has no age for 1 of 2 scans (IXI014-HH-1236_T1); they are left out" in result.output
    assert pd.read_csv(out / "region_age_trends.tsv", sep="\t")["n_subjects"].eq(1).all()
    sid = "IXI013-HH-1212_T1"
    mni = nib.load(out / sid / "layer1_top1_expert_space-MNI.nii.gz")
    assert mni.shape == (80, 96, 80)
    labels = np.asarray(mni.dataobj)
    assert set(np.unique(labels)) <= set(range(1, 9))  # experts stored as e + 1
    native = nib.load(out / sid / "layer1_top1_expert_space-native.nii.gz")
    scan = nib.load(scans[0])
    assert native.shape == scan.shape[:3] and np.allclose(native.affine, scan.affine)
    assert list((out / "cohort").glob("layer1_expert_fraction_space-MNI.nii.gz"))
    regions = pd.read_csv(out / "regions.tsv", sep="\t")
    shares = regions.groupby(["layer", "atlas", "region"])["share"].sum()
    assert np.allclose(shares, 1.0, atol=1e-6)
    assert (out / "report.html").stat().st_size > 10_000
    assert len(pd.read_csv(out / "predictions.csv")) == 2
    # each subject's map is that subject's own top-1 routing, from the model run here on its conformed scan
    model, meta = load_checkpoint(checkpoint)
    config = PreprocessConfig.from_dict(meta["preprocess"])
    volumes = np.stack([Conformer(config, default_cache_dir())(scan).volume for scan in scans])
    with torch.no_grad():
        trace = model.eval()(torch.from_numpy(volumes)[:, None], capture_routing=True).routing
    written = []
    for sample, scan in enumerate(scans):
        got = np.asarray(nib.load(out / f"{scan.name[:-7]}" / "layer1_top1_expert_space-MNI.nii.gz").dataobj)
        expected = np.asarray(expert_label_img(trace[1], trace.grid_size, config, sample).dataobj)
        np.testing.assert_array_equal(got, expected)
        written.append(got)
    assert not np.array_equal(*written)  # two scans, two different maps


def test_maps_rejects_unknown_atlas_and_layer(checkpoint, tmp_path):
    scan = str(tmp_path / "x.nii.gz")
    assert runner.invoke(app, ["maps", scan, "--atlas", "harvard_oxfrd"]).exit_code == 2
    assert runner.invoke(app, ["maps", scan, "--layer", "first"]).exit_code == 2
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    result = runner.invoke(app, ["maps", scan, "--out", str(a_file)])
    assert result.exit_code == 2 and "is a file" in " ".join(result.output.replace("│", " ").split())
    result = runner.invoke(app, ["maps", scan, "--out", str(a_file / "maps")])
    assert result.exit_code == 2 and f"{a_file} is a file" in " ".join(result.output.replace("│", " ").split())
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["maps", str(empty), "--out", str(tmp_path / "maps"), "--model", str(checkpoint)])
    assert result.exit_code == 2 and "no scans found" in result.output
    assert not (tmp_path / "maps").exists()  # a refused run leaves no folder behind
    dense_block = ["maps", str(empty), "--out", str(tmp_path / "maps"), "--model", str(checkpoint), "--layer", "0"]
    result = runner.invoke(app, dense_block)
    assert result.exit_code == 2 and "layers [0] are not MoE layers of the trace; available: [1]" in result.output
    assert not (tmp_path / "maps").exists()  # refused before the scans are looked for
    unreadable = tmp_path / "atlas.nii.gz"
    unreadable.write_bytes(b"not an image")
    fractional = tmp_path / "fractional.nii.gz"
    covering_mni = np.diag([20.0, 20, 20, 1]) + _MNI_CORNER
    nib.save(nib.Nifti1Image(np.full((10, 12, 10), 0.5, np.float32), covering_mni), fractional)
    for atlas, problem in ((unreadable, "unreadable image"), (fractional, "label values must be integers")):
        args = ["maps", str(empty), "--out", str(tmp_path / "maps"), "--model", str(checkpoint), "--atlas", str(atlas)]
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and f"atlas {atlas}: {problem}" in " ".join(result.output.split())
        assert not (tmp_path / "maps").exists()



def test_maps_of_a_model_without_experts_is_refused_before_any_work(dense_checkpoint, tmp_path):
    out = tmp_path / "maps"
    args = ["maps", str(tmp_path), "--model", str(dense_checkpoint), "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"model {dense_checkpoint} has no mixture-of-experts layer, so there is no expert routing to map" in (
        " ".join(result.output.split())
    )
    assert not out.exists()

@pytest.mark.slow
def test_maps_resume_keeps_the_earlier_scans_and_a_plain_rerun_replaces_them(checkpoint, ixi_dir, tmp_path):
    first, second = (ixi_dir / "t1" / f"{sid}_T1.nii.gz" for sid in ("IXI013-HH-1212", "IXI014-HH-1236"))
    out = tmp_path / "maps"
    common = ["--out", str(out), "--model", str(checkpoint), "--device", "cpu", "--atlas", "tissue", "--layer", "1"]
    common += ["--no-native", "-q"]
    assert runner.invoke(app, ["maps", str(first), *common], catch_exceptions=False).exit_code == 0
    trace_file = out / "routing" / "IXI013-HH-1212_T1.npz"
    written_at = trace_file.stat().st_mtime_ns
    before = pd.read_csv(out / "predictions.csv")

    result = runner.invoke(app, ["maps", str(first), str(second), *common, "--resume"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "replacing" not in result.output
    assert trace_file.stat().st_mtime_ns == written_at  # the earlier scan was not predicted again
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(table["subject_id"]) == ["IXI013-HH-1212_T1", "IXI014-HH-1236_T1"]
    kept = table[table["subject_id"] == "IXI013-HH-1212_T1"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before)
    fraction = np.asarray(nib.load(out / "cohort" / "layer1_expert_fraction_space-MNI.nii.gz").dataobj)
    assert np.any(np.isclose(fraction, 0.5))  # the cohort now holds both scans (their maps differ)

    result = runner.invoke(app, ["maps", str(second), *common], catch_exceptions=False)
    assert result.exit_code == 0
    assert "replacing the maps" in result.output and "2 scans of the earlier run" in result.output
    assert list(pd.read_csv(out / "predictions.csv")["subject_id"]) == ["IXI014-HH-1236_T1"]
    fraction = np.asarray(nib.load(out / "cohort" / "layer1_expert_fraction_space-MNI.nii.gz").dataobj)
    assert set(np.unique(fraction)) <= {0.0, 1.0}  # one scan in the cohort

    model, meta = load_checkpoint(checkpoint)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    other = save_checkpoint(tmp_path / "other.safetensors", model, meta)
    table_before = (out / "predictions.csv").read_bytes()
    args = ["maps", str(first), *common, "--resume", "--model", str(other)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "routed by another model" in result.output
    assert (out / "predictions.csv").read_bytes() == table_before  # refused before anything was written
    assert trace_file.stat().st_mtime_ns == written_at  # the earlier run's trace of that scan is untouched
