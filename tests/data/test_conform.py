"""Conform on real IXI scans: QC on the development set, invariance to re-encoding, bad inputs, cache.

The oracles: anatomy lines up with the template (bright white matter where the template has it,
dark ventricles where it has them); a scan stored in another way conforms to the same volume;
a registration started far off is flagged; cached results equal fresh ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conform_helpers import (
    bad_inputs,
    ixi_scans,
    masked_correlation,
    reencoded_variants,
    save_montage,
    write_dicom_series,
)

from ermoe_ba.data.conform import Conformer, auto_workers, conform_records
from ermoe_ba.data.discovery import ScanRecord, discover
from ermoe_ba.data.sitk_utils import itk_threads
from ermoe_ba.data.template import grid_mask, grid_template
from ermoe_ba.models.config import PreprocessConfig

CONFIG = PreprocessConfig()


@pytest.fixture(scope="module")
def scan() -> Path:
    return ixi_scans()[0]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("conform-cache")


@pytest.fixture(scope="module")
def reference(scan: Path, cache_dir: Path):
    return Conformer(CONFIG, cache_dir)(scan)


def _tissue_contrast(volume: np.ndarray) -> float:
    """Mean intensity where the template is white matter minus where it is ventricle/CSF."""
    template, mask = grid_template(CONFIG), grid_mask(CONFIG)
    bright = mask & (template > np.percentile(template[mask], 85))
    dark = mask & (template < np.percentile(template[mask], 5))
    return float(volume[bright].mean() - volume[dark].mean())


@pytest.mark.slow
def test_ten_development_scans_pass_qc_and_line_up_with_the_template(tmp_path: Path, cache_dir: Path) -> None:
    scans = ixi_scans()
    chosen = scans[:: max(1, len(scans) // 10)][:10]
    assert len(chosen) == 10
    results = list(conform_records(chosen, CONFIG, cache_dir=cache_dir, workers=2, progress=False))
    assert [r.path for r in results] == chosen  # input order
    for result in results:
        assert result.status == "ok", result.error
        assert result.volume.shape == CONFIG.grid_shape and result.volume.dtype == np.float32
        np.testing.assert_allclose(result.affine, CONFIG.grid_affine())
        assert 0.3 < result.qc_score < 0.8
        # Template white matter (robust z about +0.6) brighter than template CSF (about -1.3);
        # a brain registered 50 mm off mixes the two and scores about -0.2.
        assert _tissue_contrast(result.volume) > 1.0, result.subject_id
        inside = result.volume[grid_mask(CONFIG)]
        assert abs(np.median(inside)) < 0.05 and np.all(result.volume[~grid_mask(CONFIG)] == 0)
    png = save_montage(
        [r.volume for r in results],
        grid_template(CONFIG),
        [r.subject_id for r in results],
        tmp_path / "m.png",
    )
    assert png.stat().st_size > 20_000


@pytest.mark.slow
def test_reencoded_scan_conforms_to_nearly_the_same_volume(scan: Path, reference, tmp_path: Path) -> None:
    assert reference.status == "ok"
    mask = grid_mask(CONFIG)
    variants = reencoded_variants(scan, tmp_path)
    results = conform_records(list(variants.values()), CONFIG, workers=2, progress=False)
    for name, result in zip(variants, results, strict=True):
        assert result.status == "ok", (name, result.error)
        assert masked_correlation(result.volume, reference.volume, mask) >= 0.97, name


def test_bad_inputs_get_one_line_errors_and_the_good_scan_still_succeeds(
    scan: Path, cache_dir: Path, reference, tmp_path: Path
) -> None:
    bad = bad_inputs(tmp_path)
    paths = [path for path, _ in bad.values()]
    records = [ScanRecord("good", scan), *[ScanRecord(p.name, p) for p in paths]]
    results = list(conform_records(records, CONFIG, cache_dir=cache_dir, progress=False))
    assert results[0].status == "ok" and results[0].cached
    np.testing.assert_array_equal(results[0].volume, reference.volume)
    for result, (name, (path, words)) in zip(results[1:], bad.items(), strict=True):
        assert result.status == "error" and result.volume is None, name
        assert result.error.startswith(f"{path}: ") and words in result.error, (name, result.error)
        assert "\n" not in result.error


def test_cache_hit_equals_fresh_result_and_skips_registration(scan: Path, cache_dir: Path, reference) -> None:
    again = Conformer(CONFIG, cache_dir)(ScanRecord("renamed", scan))
    assert again.cached and again.subject_id == "renamed"
    np.testing.assert_array_equal(again.volume, reference.volume)
    np.testing.assert_array_equal(again.transform, reference.transform)
    assert again.qc_score == reference.qc_score
    other = Conformer(PreprocessConfig(intensity="none"), cache_dir)(scan)
    assert not other.cached  # a different config is a different entry


def test_a_cached_scan_with_nan_voxels_warns_as_the_first_reading_did(scan: Path, tmp_path: Path, caplog) -> None:
    import nibabel as nib

    image = nib.load(scan)
    data = image.get_fdata(dtype=np.float32)
    data[:4] = np.nan  # as a resampling tool writes voxels outside the field of view
    holed = tmp_path / "holed.nii.gz"
    nib.save(nib.Nifti1Image(data, image.affine), holed)
    expected = f"{holed}: {4 * data.shape[1] * data.shape[2]} NaN or infinite voxels read as 0"
    conformer = Conformer(CONFIG, tmp_path / "cache")
    for cached in (False, True):
        caplog.clear()
        with caplog.at_level("WARNING", logger="ermoe_ba.data.io"):
            result = conformer(holed)
        assert result.cached is cached and result.status == "ok"
        assert result.not_finite_voxels == 4 * data.shape[1] * data.shape[2]
        assert expected in caplog.text


def test_conform_is_deterministic_whatever_the_thread_count(scan: Path, reference) -> None:
    # Before N4 and registration were pinned to one thread, this scan's transforms with 1 and 2
    # threads differed by up to 2e-3 per matrix entry (a 1 mm copy of IXI354's by 0.5 mm).
    for threads in (1, 2):
        with itk_threads(threads):
            fresh = Conformer(CONFIG)(scan)
        assert not fresh.cached
        np.testing.assert_array_equal(fresh.transform, reference.transform)
        np.testing.assert_array_equal(fresh.volume, reference.volume)


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_workers(scan: Path, reference) -> None:
    second = ixi_scans()[7]
    alone = list(conform_records([scan, second], CONFIG, workers=1, progress=False))
    pooled = list(conform_records([scan, second], CONFIG, workers=0, progress=False))  # auto
    assert auto_workers(2) == min(os.cpu_count() or 1, 2) and auto_workers(100) <= 4
    for one, other in zip(alone, pooled, strict=True):
        np.testing.assert_array_equal(one.transform, other.transform)
        np.testing.assert_array_equal(one.volume, other.volume)
    np.testing.assert_array_equal(alone[0].volume, reference.volume)


def test_registration_started_far_off_is_flagged_qc_fail(scan: Path) -> None:
    # Start 50 mm too high, barely optimise, no retries: the brain lands on the wrong structure.
    broken = {"iterations": 3, "retry_offsets_mm": [], "head_top_to_anchor_mm": 32.0}
    result = Conformer(PreprocessConfig(extra={"registration": broken}))(scan)
    assert result.status == "qc_fail" and result.volume is not None
    assert "failed QC" in result.error and result.qc_reasons


def test_dicom_series_conforms_like_the_nifti(scan: Path, reference, tmp_path: Path) -> None:
    folder = write_dicom_series(scan, tmp_path / "dicom" / "t1")
    [record] = discover([tmp_path / "dicom"])
    assert record.source == "dicom"
    result = Conformer(CONFIG)(record)
    assert result.status == "ok", result.error
    assert masked_correlation(result.volume, reference.volume, grid_mask(CONFIG)) > 0.99
    assert record.path == folder


def test_template_already_in_mni_space_without_registration(tmp_path: Path) -> None:
    import nibabel as nib
    from nilearn.datasets import load_mni152_template

    path = tmp_path / "mni.nii.gz"
    nib.save(load_mni152_template(resolution=2), path)
    result = Conformer(PreprocessConfig(register=False, bias_correction=False))(path)
    assert result.status == "ok", result.error
    assert result.qc_score > 0.999
    np.testing.assert_allclose(result.transform, np.eye(4))
