"""Token -> voxel mapping and per-subject maps against an explicit voxel loop."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from ermoe_ba.interpret import (
    EXPERT_LABEL_OFFSET,
    expert_label_img,
    expert_weights_img,
    model_grid_affine,
    patch_voxels,
    tokens_to_grid,
    write_subject_maps,
)
from ermoe_ba.interpret._io import write_text
from ermoe_ba.interpret.tokens import resolve_layers
from ermoe_ba.models.config import PreprocessConfig


def _expected_labels(top1: np.ndarray, grid_size, shape, patch) -> np.ndarray:
    """Oracle: visit every voxel, find its token by integer division, read that token's expert."""
    out = np.zeros(shape, dtype=np.int16)
    for i, j, k in itertools.product(*(range(s) for s in shape)):
        g = (i // patch[0], j // patch[1], k // patch[2])
        if all(gg < n for gg, n in zip(g, grid_size, strict=True)):
            out[i, j, k] = top1[np.ravel_multi_index(g, grid_size)] + 1
    return out


@pytest.mark.parametrize("shape", [(12, 8, 6), (13, 9, 7)])  # divisible, and with uncovered voxels
def test_known_expert_per_token_gives_exact_voxel_labels(make_trace, shape):
    cfg = PreprocessConfig(grid_shape=shape, voxel_size=3.0, grid_origin=(-10.0, 5.0, 20.0))
    grid_size = (3, 2, 3)
    patch = patch_voxels(cfg, grid_size)
    assert patch == (4, 4, 2)
    top1 = np.random.default_rng(1).integers(0, 5, size=18)
    trace = make_trace(top1[None], 5, grid_size)
    img = expert_label_img(trace[1], grid_size, cfg)
    np.testing.assert_array_equal(np.asarray(img.dataobj), _expected_labels(top1, grid_size, shape, patch))
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(img.affine, np.asarray(cfg.grid_affine()))
    assert img.header.get_intent()[0] == "label"


def test_voxel_world_coordinate_lies_inside_its_token_box():
    cfg = PreprocessConfig()
    grid_size = (5, 6, 5)
    tokens = np.arange(150)
    grid = tokens_to_grid(tokens, grid_size, cfg)
    affine = model_grid_affine(cfg)
    # world point of voxel (40, 50, 30); its token's box in world mm is origin + 2 mm * 16 * g
    world = affine @ [40, 50, 30, 1]
    g = np.unravel_index(grid[40, 50, 30], grid_size)
    low = np.asarray(cfg.grid_origin) + 2.0 * 16 * np.asarray(g)
    assert np.all(world[:3] >= low) and np.all(world[:3] < low + 32)


def test_expert_weights_sum_to_one_and_match_gates(make_trace):
    cfg = PreprocessConfig(grid_shape=(4, 4, 4))
    trace = make_trace(np.array([[0, 1, 2, 3, 0, 1, 2, 3]]), 4, (2, 2, 2))
    weights = np.asarray(expert_weights_img(trace[1], (2, 2, 2), cfg).dataobj)
    assert weights.shape == (4, 4, 4, 4)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)
    gate = float(trace[1].top_k_weight[0, 5, 0])  # token 5 -> box (1, 0, 1), top-1 expert 1
    assert weights[2, 0, 2, 1] == pytest.approx(gate)


def test_write_subject_maps_round_trips_through_files(tmp_path, make_trace):
    cfg = PreprocessConfig(grid_shape=(8, 8, 8))
    top1 = np.arange(8) % 3
    trace = make_trace(top1[None], 3, (2, 2, 2))
    paths = write_subject_maps("sub-01", trace, cfg, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == [
        "layer1_expert_weights_space-MNI.nii.gz",
        "layer1_top1_expert_space-MNI.nii.gz",
        "layer1_top1_weight_space-MNI.nii.gz",
    ]
    labels = nib.load(tmp_path / "sub-01" / "layer1_top1_expert_space-MNI.nii.gz")
    np.testing.assert_array_equal(labels.affine, np.asarray(cfg.grid_affine()))
    assert labels.header.get_sform(coded=True)[1] == 4  # MNI
    assert np.asarray(labels.dataobj)[7, 7, 7] == top1[7] + EXPERT_LABEL_OFFSET
    assert not list(tmp_path.rglob(".tmp-*"))


def test_bad_inputs_give_clear_errors(tmp_path, make_trace):
    cfg = PreprocessConfig(grid_shape=(8, 8, 8))
    trace = make_trace(np.zeros((1, 8), dtype=int), 2, (2, 2, 2))
    with pytest.raises(ValueError, match="has 27 tokens"):
        tokens_to_grid(np.zeros(8), (3, 3, 3), cfg)
    with pytest.raises(ValueError, match="available: \\[1\\]"):
        resolve_layers(trace, [3])
    with pytest.raises(ValueError, match="comma-separated"):
        resolve_layers(trace, "first")
    assert resolve_layers(trace, "1") == [1]
    with pytest.raises(ValueError, match="cannot name an output folder"):
        write_subject_maps("../x", trace, cfg, tmp_path)
    with pytest.raises(ValueError, match="give both"):
        write_subject_maps("s", trace, cfg, tmp_path, transform=np.eye(4))
    with pytest.raises(ValueError, match="grid_size"):
        write_subject_maps("s", dict(trace.layers), cfg, tmp_path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text("first", target)
    with pytest.raises(TypeError):
        write_text(None, target)  # type: ignore[arg-type]
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
