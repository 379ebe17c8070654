"""Model grid -> native space: exact nearest-neighbour oracle, a second implementation, a real scan."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ermoe_ba.interpret import check_transform, model_grid_affine, to_native, write_subject_maps
from ermoe_ba.interpret.tokens import grid_image
from ermoe_ba.models.config import PreprocessConfig


def _similarity(angles_deg, scale, shift) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = scale * Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    matrix[:3, 3] = shift
    return matrix


@pytest.fixture
def geometry():
    """A small model grid, an oblique P-S-R native scan grid (like IXI) and a known transform."""
    cfg = PreprocessConfig(grid_shape=(20, 24, 20), voxel_size=4.0, grid_origin=(-40.0, -48.0, -40.0))
    axes = np.array([[0.0, 0.0, 2.5], [-2.5, 0.0, 0.0], [0.0, 2.5, 0.0]])  # voxel axes point P, S, R
    native_affine = np.eye(4)
    native_affine[:3, :3] = Rotation.from_euler("z", 7, degrees=True).as_matrix() @ axes
    native_affine[:3, 3] = [-55.0, 70.0, -60.0]
    native = nib.Nifti1Image(np.zeros((48, 44, 40), np.float32), native_affine)
    transform = _similarity([5, -3, 12], 1.07, [4.0, -9.0, 13.0])
    return cfg, native, transform


def test_every_native_voxel_takes_the_nearest_model_voxel(geometry):
    cfg, native, transform = geometry
    ids = np.arange(1, np.prod(cfg.grid_shape) + 1, dtype=np.int32).reshape(cfg.grid_shape)
    out = to_native(grid_image(ids, cfg), transform, native)
    got = np.asarray(out.dataobj)
    assert got.dtype == np.int32 and got.shape == native.shape
    np.testing.assert_array_equal(out.affine, native.affine)

    # oracle: native voxel -> native world -> template world -> model voxel, rounded
    v = np.stack(np.meshgrid(*(np.arange(s) for s in native.shape), indexing="ij"), -1).reshape(-1, 3)
    to_model = np.linalg.inv(model_grid_affine(cfg)) @ np.linalg.inv(transform) @ native.affine
    u = v @ to_model[:3, :3].T + to_model[:3, 3]
    shape = np.asarray(cfg.grid_shape)
    inside = np.all((u >= 0) & (u <= shape - 1), axis=1)
    outside = np.any((u < -0.5) | (u > shape - 0.5), axis=1)
    nearest = np.rint(u[inside]).astype(int)
    expected = ids[tuple(nearest.T)]
    np.testing.assert_array_equal(got.reshape(-1)[inside], expected)
    assert np.all(got.reshape(-1)[outside] == 0)
    assert inside.sum() > 5000 and outside.sum() > 5000  # the test covers both cases


def test_agrees_with_the_preprocessing_helpers_mapping(geometry, tmp_path):
    from ermoe_ba.data.native import to_native as data_to_native

    cfg, native, transform = geometry
    labels = np.random.default_rng(0).integers(0, 9, size=cfg.grid_shape).astype(np.int16)
    nib.save(native, tmp_path / "scan.nii.gz")
    ours = np.asarray(to_native(grid_image(labels, cfg), transform, tmp_path / "scan.nii.gz").dataobj)
    scan = tmp_path / "scan.nii.gz"
    theirs = data_to_native(labels, transform, scan, order=0, grid_affine=cfg.grid_affine())
    theirs = np.asarray(theirs.dataobj)
    assert (ours == theirs).mean() > 0.999  # equal up to rounding ties at exact half voxels


def test_4d_maps_and_subject_writer_in_native_space(geometry, tmp_path, make_trace):
    cfg, native, transform = geometry
    grid_size = (5, 6, 5)
    top1 = np.random.default_rng(2).integers(0, 3, size=150)
    trace = make_trace(top1[None], 3, grid_size)
    paths = write_subject_maps("sub-1", trace, cfg, tmp_path, transform=transform, native_img=native)
    assert len(paths) == 6
    labels = nib.load(tmp_path / "sub-1" / "layer1_top1_expert_space-native.nii.gz")
    weights = nib.load(tmp_path / "sub-1" / "layer1_expert_weights_space-native.nii.gz")
    assert weights.shape == (*native.shape, 3)
    lab = np.asarray(labels.dataobj)
    w = np.asarray(weights.dataobj)
    covered = lab > 0
    assert covered.mean() > 0.1
    # the 4D map went through the same voxel lookup: its top-1 expert agrees with the label map
    # wherever the top-1 gate is larger than any other expert's weight (always, gates here > 0.5)
    np.testing.assert_array_equal(w[covered].argmax(axis=-1) + 1, lab[covered])


def test_transform_validation():
    with pytest.raises(ValueError, match="no registration transform"):
        check_transform(None)
    with pytest.raises(ValueError, match="4x4"):
        check_transform(np.eye(3))
    with pytest.raises(ValueError, match="singular"):
        check_transform(np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="last row"):
        check_transform(np.ones((4, 4)))
    bad = np.eye(4)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        check_transform(bad)


def test_real_ixi_scan_lines_up_after_the_round_trip(ixi_dir):
    """Conform a real scan with a hand-made transform, label it there, map back: labels agree."""
    scan = nib.load(sorted((ixi_dir / "t1").glob("*.nii.gz"))[0])
    data = scan.get_fdata(dtype=np.float32)
    cfg = PreprocessConfig()
    grid_affine = model_grid_affine(cfg)
    centre_scan = scan.affine @ [*(np.asarray(data.shape) / 2), 1]
    centre_grid = grid_affine @ [*(np.asarray(cfg.grid_shape) / 2), 1]
    transform = _similarity([8, -5, 12], 0.95, [0, 0, 0])
    transform[:3, 3] = centre_scan[:3] - transform[:3, :3] @ centre_grid[:3]

    threshold = np.percentile(data[data > 0], 60)
    native_labels = np.where(ndimage.gaussian_filter(data, 1) > threshold, 2, 1)
    model_to_scan_voxels = np.linalg.inv(scan.affine) @ transform @ grid_affine
    conformed = ndimage.affine_transform(data, model_to_scan_voxels, output_shape=cfg.grid_shape, order=1)
    model_labels = np.where(ndimage.gaussian_filter(conformed, 1) > threshold, 2, 1).astype(np.int16)

    def agreement(matrix):
        back = np.asarray(to_native(grid_image(model_labels, cfg), matrix, scan).dataobj)
        inside = back > 0
        return inside.mean(), (back[inside] == native_labels[inside]).mean()

    covered, right = agreement(transform)
    _, shifted = agreement(transform @ _similarity([0, 0, 0], 1.0, [4.0, 0, 0]))
    assert covered > 0.3
    assert right > 0.95
    assert shifted < right - 0.05  # a 4 mm error in the transform is visible: the check can fail


@pytest.mark.slow
def test_native_maps_line_up_with_the_real_registration_transform(ixi_dir, mni_config):
    """Through the preprocessing helper's own ConformResult.transform (one real registration):
    a bright/dark split of the conformed brain, mapped back, matches the same split of the scan."""
    from ermoe_ba.data.cache import default_cache_dir
    from ermoe_ba.data.conform import Conformer
    from ermoe_ba.interpret import load_atlas

    path = sorted((ixi_dir / "t1").glob("*.nii.gz"))[0]
    result = Conformer(mni_config, default_cache_dir())(path)
    assert result.status == "ok", result.error
    brain = load_atlas("tissue", mni_config).data > 0
    smooth = ndimage.gaussian_filter(result.volume, 1)
    labels = np.zeros(mni_config.grid_shape, np.int16)
    labels[brain] = np.where(smooth[brain] > np.median(result.volume[brain]), 2, 1)
    native = ndimage.gaussian_filter(nib.load(path).get_fdata(), 1)

    def agreement(transform):
        back = np.asarray(to_native(grid_image(labels, mni_config), transform, path).dataobj)
        inside = back > 0
        split = np.where(native[inside] > np.median(native[inside]), 2, 1)
        return (split == back[inside]).mean()

    right = agreement(result)  # the ConformResult itself is accepted
    shifted = agreement(result.transform @ _similarity([0, 0, 0], 1.0, [6.0, 0, 0]))
    assert right > 0.88 and shifted < right - 0.07  # measured: 0.92 vs 0.79
