"""Loading and validation: every bad input gets its own one-line error; good ones reorient to RAS."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conform_helpers import bad_inputs, save_nifti, synthetic_head

from ermoe_ba.data.io import ScanError, load_scan, validate_array
from ermoe_ba.data.sitk_utils import affine_to_ras_matrix, array_to_sitk, sitk_to_array


def test_each_bad_input_has_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    for name, (path, words) in bad_inputs(tmp_path).items():
        with pytest.raises(ScanError) as info:
            load_scan(path)
        message = str(info.value)
        assert message.startswith(f"{path}: "), name
        assert words in message, (name, message)
        assert "\n" not in message, name
        assert "install" not in message, (name, message)  # not MONAI's "no suitable reader" advice



def test_nan_and_infinite_voxels_are_background_with_a_warning(tmp_path: Path, caplog) -> None:
    data = synthetic_head()
    holed = data.copy()
    holed[:5] = np.nan  # as written by tools that resample or mask: outside the field of view
    holed[-1, -1, -1] = np.inf
    path = save_nifti(tmp_path / "holed.nii.gz", holed)
    with caplog.at_level("WARNING", logger="ermoe_ba.data.io"):
        scan = load_scan(path)
    expected = data.copy()
    expected[:5] = 0
    expected[-1, -1, -1] = 0
    np.testing.assert_array_equal(scan.data, load_scan(save_nifti(tmp_path / "zeroed.nii.gz", expected)).data)
    assert f"{path}: {5 * data.shape[1] * data.shape[2] + 1} NaN or infinite voxels read as 0" in caplog.text

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="does not exist"):
        load_scan(tmp_path / "gone.nii.gz")


def test_single_volume_4d_and_scaled_int16_load_like_the_float_original(tmp_path: Path) -> None:
    data = synthetic_head()
    ref = load_scan(save_nifti(tmp_path / "a.nii.gz", data))
    four_d = load_scan(save_nifti(tmp_path / "b.nii.gz", data[..., None]))
    img = nib.Nifti1Image(np.round((data - 10) / 0.5).astype(np.int16), np.diag([3.0, 3, 3, 1]))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, tmp_path / "c.nii.gz")
    scaled = load_scan(tmp_path / "c.nii.gz")
    np.testing.assert_array_equal(four_d.data, ref.data)
    np.testing.assert_allclose(scaled.data, ref.data, atol=0.25)


def test_reorientation_to_ras_keeps_every_voxel_at_its_world_point(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((60, 80, 45), dtype=np.float32) + 1
    # Axes stored as P, S, R like the IXI scans.
    affine = np.array([[0, 0, 2.0, -30], [-1.5, 0, 0, 40], [0, 3.0, 0, -20], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "psr.nii.gz")
    scan = load_scan(tmp_path / "psr.nii.gz")
    assert nib.aff2axcodes(scan.affine) == ("R", "A", "S")
    assert scan.data.shape == (45, 60, 80) and scan.native_shape == (60, 80, 45)
    np.testing.assert_allclose(scan.native_affine, affine)
    for ijk in [(0, 0, 0), (5, 7, 3), (59, 79, 44)]:
        world = affine @ np.array([*ijk, 1.0])
        ras_index = np.round(np.linalg.inv(scan.affine) @ world).astype(int)[:3]
        assert scan.data[tuple(ras_index)] == data[ijk]


def test_sitk_round_trip_and_transform_matrix_known_answer() -> None:
    import SimpleITK as sitk

    data = np.random.default_rng(2).random((5, 6, 7)).astype(np.float32)
    affine = np.array([[0, 0, 2.0, -30], [-1.5, 0, 0, 40], [0, 3.0, 0, -20], [0, 0, 0, 1]])
    image = array_to_sitk(data, affine)
    # ITK physical point of index (1, 2, 3) is the LPS version of the RAS world point.
    world = affine @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((1, 2, 3)), world[:3] * [-1, -1, 1])
    back, back_affine = sitk_to_array(image)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine, atol=1e-12)
    # A translation of +5 mm along LPS x is -5 mm along RAS x.
    matrix = affine_to_ras_matrix(sitk.TranslationTransform(3, (5.0, 0.0, 0.0)))
    np.testing.assert_allclose(matrix, [[1, 0, 0, -5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-12)


def test_validate_array_rejects_singular_affine() -> None:
    with pytest.raises(ValueError, match="affine"):
        validate_array(synthetic_head(), np.zeros((4, 4)))


def test_mgz_loads_like_nifti(tmp_path: Path) -> None:
    data = synthetic_head()
    nifti = load_scan(save_nifti(tmp_path / "a.nii.gz", data))
    nib.save(nib.MGHImage(data, np.diag([3.0, 3.0, 3.0, 1.0])), tmp_path / "a.mgz")
    mgz = load_scan(tmp_path / "a.mgz")
    np.testing.assert_array_equal(mgz.data, nifti.data)
    np.testing.assert_allclose(mgz.affine, nifti.affine)
