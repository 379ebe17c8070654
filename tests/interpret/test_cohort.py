"""Cohort maps: fraction of subjects per expert and voxel, modal expert, trace splitting."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ermoe_ba.interpret import cohort_fraction_img, modal_expert_img, split_trace, write_cohort_maps
from ermoe_ba.interpret.cohort import check_cohort
from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.routing.trace import RoutingTrace

CFG = PreprocessConfig(grid_shape=(4, 2, 2))
GRID = (2, 1, 1)


def test_fraction_and_modal_expert_from_known_subjects(tmp_path, make_trace):
    # token 0: experts 2, 2, 1, 0 over four subjects; token 1: 1, 1, 1, 1
    top1 = np.array([[2, 1], [2, 1], [1, 1], [0, 1]])
    traces = {f"s{i}": make_trace(top1[i : i + 1], 3, GRID, seed=i) for i in range(4)}
    frac = np.asarray(cohort_fraction_img(traces, CFG, 1).dataobj)
    assert frac.shape == (4, 2, 2, 3)
    np.testing.assert_allclose(frac[0, 0, 0], [0.25, 0.25, 0.5])
    np.testing.assert_allclose(frac[3, 1, 1], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(frac.sum(axis=-1), 1.0)
    modal = np.asarray(modal_expert_img(traces, CFG, 1).dataobj)
    np.testing.assert_array_equal(modal[:, 0, 0], [3, 3, 2, 2])  # e + 1 coding

    paths = write_cohort_maps(traces, CFG, tmp_path)
    assert [p.name for p in paths] == [
        "layer1_expert_fraction_space-MNI.nii.gz",
        "layer1_modal_expert_space-MNI.nii.gz",
    ]
    on_disk = nib.load(paths[0])
    np.testing.assert_array_equal(on_disk.affine, np.asarray(CFG.grid_affine()))
    np.testing.assert_allclose(np.asarray(on_disk.dataobj), frac)


def test_split_trace_gives_single_sample_traces(make_trace):
    batch = make_trace(np.array([[0, 1], [1, 0], [1, 1]]), 2, GRID)
    parts = split_trace(batch, ["a", "b", "c"])
    assert list(parts) == ["a", "b", "c"]
    assert torch.equal(parts["b"][1].top1, torch.tensor([[1, 0]]))
    assert parts["c"].grid_size == GRID
    with pytest.raises(ValueError, match="3 samples but 2 subject ids"):
        split_trace(batch, ["a", "b"])
    with pytest.raises(ValueError, match="split batches with split_trace"):
        check_cohort({"all": batch})


def test_subjects_from_different_models_are_refused(make_trace):
    a = make_trace(np.array([[0, 1]]), 2, GRID)
    b = make_trace(np.array([[0, 1]]), 3, GRID)
    with pytest.raises(ValueError, match="different model"):
        check_cohort({"a": a, "b": b})
    with pytest.raises(ValueError, match="empty"):
        check_cohort({})
    with pytest.raises(ValueError, match="no MoE layer"):
        write_cohort_maps({"a": RoutingTrace({}, GRID)}, CFG, "unused")
