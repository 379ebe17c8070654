"""The linear member's age-weight map: it reproduces the member's prediction and lands in the report."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from ermoe_ba.interpret import build_maps
from ermoe_ba.interpret.linear_weights import age_weight_img, linear_members
from ermoe_ba.models import ModelEnsemble, create_model


def _member(config):
    torch.manual_seed(0)
    return create_model("voxel_ridge", preprocess=config)


def test_map_times_the_scan_plus_intercept_is_the_members_age(mni_config):
    member = _member(mni_config)
    with torch.no_grad():
        member.bias.fill_(0.3)
    x = torch.randn(1, 1, *mni_config.grid_shape)
    with torch.no_grad():
        age = float(member(x).output) * 12.0 + 50.0
    weights = np.asanyarray(age_weight_img(member, mni_config, target_std=12.0).dataobj)
    assert weights.shape == tuple(mni_config.grid_shape)
    np.testing.assert_allclose((weights * x[0, 0].numpy()).sum() + 0.3 * 12.0 + 50.0, age, rtol=1e-5)


def test_linear_members_are_found_inside_an_ensemble(mni_config):
    member = _member(mni_config)
    other = create_model("voxel_ridge", preprocess=mni_config)
    assert linear_members(ModelEnsemble([member, other])) == [member, other]
    assert linear_members(torch.nn.Linear(2, 2)) == []


def test_build_maps_writes_weight_maps_and_draws_them(tmp_path, mni_config, make_trace):
    grid = (10, 12, 10)
    traces = {f"sub-{i}": make_trace(np.zeros((1, int(np.prod(grid))), np.int64), 4, grid, seed=i) for i in range(2)}
    img = age_weight_img(_member(mni_config), mni_config, target_std=12.0)
    caption = "Linear member weights (test)"
    result = build_maps(
        traces, mni_config, tmp_path, atlas=("tissue",), weight_maps={"linear_age_weights": (img, caption)},
        glass_brain=False,
    )  # fmt: skip
    written = tmp_path / "linear_age_weights_space-MNI.nii.gz"
    assert written in result.cohort_files
    np.testing.assert_array_equal(np.asanyarray(nib.load(written).dataobj), np.asanyarray(img.dataobj))
    assert (tmp_path / "figures" / "linear_age_weights.png") in result.figure_files
    assert caption in result.report.read_text()
