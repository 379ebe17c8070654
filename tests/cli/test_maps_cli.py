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
from ermoe_ba.training.checkpoint import load_checkpoint

runner = CliRunner()


@pytest.mark.slow
def test_maps_writes_subject_cohort_native_maps_tables_and_report(checkpoint, ixi_dir, tmp_path):
    scans = [ixi_dir / "t1" / f"{sid}_T1.nii.gz" for sid in ("IXI013-HH-1212", "IXI014-HH-1236")]
    out = tmp_path / "maps"
    args = ["maps", *map(str, scans), "--out", str(out), "--model", str(checkpoint), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--atlas", "tissue", "--layer", "1", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
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
