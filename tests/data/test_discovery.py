"""Discovery: files, folders, BIDS, tables, DICOM series; stable unique ids; ages."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ermoe_ba.data.discovery import DiscoveryError, ScanRecord, discover, read_age_table, subject_id_from_path


def _nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), path)
    return path


def _dicom_series(folder: Path) -> Path:
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    volume = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    volume.SetSpacing((1.0, 1.0, 2.0))
    for z in range(volume.GetDepth()):
        slice_ = volume[:, :, z]
        slice_.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")  # series instance uid
        slice_.SetMetaData("0020|0032", f"0\\0\\{2.0 * z}")  # image position (patient)
        slice_.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")  # image orientation (patient)
        slice_.SetMetaData("0020|0013", str(z + 1))  # instance number
        slice_.SetMetaData("0008|0060", "MR")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # otherwise every slice gets its own series uid
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(slice_)
    return folder


def test_subject_id_strips_image_extensions() -> None:
    assert subject_id_from_path("a/sub-01_T1w.nii.gz") == "sub-01_T1w"
    assert subject_id_from_path("scan.nii") == "scan"
    assert subject_id_from_path("brain.mgz") == "brain"


def test_folder_search_is_recursive_sorted_and_ids_unique(tmp_path: Path) -> None:
    _nifti(tmp_path / "b" / "scan.nii.gz")
    _nifti(tmp_path / "a" / "scan.nii")
    _nifti(tmp_path / "a" / "deep" / "other.nii.gz")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    records = discover([tmp_path])
    assert [r.path.relative_to(tmp_path).as_posix() for r in records] == [
        "a/scan.nii",
        "a/deep/other.nii.gz",
        "b/scan.nii.gz",
    ]
    assert [r.subject_id for r in records] == ["scan", "other", "b_scan"]
    assert {r.source for r in records} == {"file"}


def test_explicit_files_are_kept_even_if_not_images(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("x")
    good = _nifti(tmp_path / "good.nii.gz")
    assert [(r.subject_id, r.path) for r in discover([good, bad])] == [("good", good), ("bad.txt", bad)]


def test_missing_input_raises_one_line_discovery_error(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="does not exist") as info:
        discover([tmp_path / "nope.nii.gz"])
    assert "\n" not in str(info.value) and "nope.nii.gz" in str(info.value)


def test_inputs_without_any_scan_are_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no scans here")
    with pytest.raises(DiscoveryError, match="no scans found in") as info:
        discover([empty])
    assert str(empty) in str(info.value) and "\n" not in str(info.value)
    good = _nifti(tmp_path / "good.nii.gz")
    assert [r.path for r in discover([empty, good])] == [good]  # an empty folder beside scans is no error


def test_bids_sessions_runs_ages_and_other_modalities_ignored(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t34.5\tF\nsub-02\tn/a\tM\n")
    _nifti(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _nifti(root / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    _nifti(root / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    _nifti(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_run-1_T1w.nii.gz")
    _nifti(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_run-2_T1w.nii")
    records = discover([root])
    assert [(r.subject_id, r.session, r.age, r.source) for r in records] == [
        ("sub-01", None, 34.5, "bids"),
        ("sub-02_ses-1_run-1", "ses-1", None, "bids"),
        ("sub-02_ses-1_run-2", "ses-1", None, "bids"),
    ]


def test_table_of_paths_relative_to_table_with_ids_and_ages(tmp_path: Path) -> None:
    _nifti(tmp_path / "img" / "x.nii.gz")
    _nifti(tmp_path / "img" / "y.nii.gz")
    (tmp_path / "list.tsv").write_text("subject_id\tpath\tage\nS1\timg/x.nii.gz\t50\n\timg/y.nii.gz\t\n")
    records = discover([tmp_path / "list.tsv"])
    assert records == [
        ScanRecord("S1", tmp_path / "img" / "x.nii.gz", 50.0, "table"),
        ScanRecord("y", tmp_path / "img" / "y.nii.gz", None, "table"),
    ]


def test_table_without_path_column_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("subject_id,age\na,3\n")
    with pytest.raises(DiscoveryError, match="path column"):
        discover([tmp_path / "t.csv"])


def test_age_table_overrides_and_matches_id_prefixes(tmp_path: Path) -> None:
    _nifti(tmp_path / "IXI013-HH-1212_T1.nii.gz")
    _nifti(tmp_path / "other.nii.gz")
    ages = tmp_path / "ages.csv"
    ages.write_text("subject_id,file,age\nIXI013-HH-1212,t1/x.nii.gz,46.71\nIXI013-HH,t1/y,1\nnobody,z,\n")
    assert read_age_table(ages) == {"IXI013-HH-1212": 46.71, "IXI013-HH": 1.0}
    by_id = {r.subject_id: r.age for r in discover([tmp_path], ages=ages)}
    assert by_id == {"IXI013-HH-1212_T1": 46.71, "other": None}



def test_age_table_missing_markers_and_repeated_rows(tmp_path: Path) -> None:
    ages = tmp_path / "ages.csv"
    ages.write_text("subject_id,age\na, n/a\nb,NA\nc,nan\nd,\ne,40.5\ne,40.50\nf,0.5\n")
    assert read_age_table(ages) == {"e": 40.5, "f": 0.5}  # the same age twice is no conflict


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("s1,40\ns2,forty\n", "ages.csv line 3 (s2): age 'forty' is not a number"),
        ("\ns1,40\n\n\ns2,forty\n", "ages.csv line 6 (s2): age 'forty' is not a number"),  # blank lines count
        ("s1,480\n", "ages.csv line 2 (s1): age 480 is not between 0 and 130 years"),
        ("s1,-3\n", "age -3 is not between 0 and 130 years"),
        ("s1,inf\n", "age inf is not between"),
        ("s1,50\ns1,51\n", "ages.csv: subject s1 has two different ages (50 and 51)"),
    ],
)
def test_age_table_typos_are_errors_naming_the_row(tmp_path: Path, rows: str, message: str) -> None:
    ages = tmp_path / "ages.csv"
    ages.write_text("subject_id,age\n" + rows)
    with pytest.raises(DiscoveryError, match=re.escape(message)):
        read_age_table(ages)


def test_scan_table_age_typo_is_an_error_naming_the_row(tmp_path: Path) -> None:
    _nifti(tmp_path / "x.nii.gz")
    (tmp_path / "list.csv").write_text("path,age\n\nx.nii.gz,4O\n")
    with pytest.raises(DiscoveryError, match=re.escape("list.csv line 3 (x): age '4O' is not a number")):
        discover([tmp_path / "list.csv"])


def test_a_file_reached_twice_is_one_record(tmp_path: Path, caplog) -> None:
    scan = _nifti(tmp_path / "a" / "s.nii.gz")
    _nifti(tmp_path / "b" / "s.nii.gz")
    with caplog.at_level("WARNING", logger="ermoe_ba.data.discovery"):
        records = discover([tmp_path, scan, tmp_path / "a" / ".." / "a" / "s.nii.gz"])
    assert [(r.subject_id, r.path) for r in records] == [
        ("s", tmp_path / "a" / "s.nii.gz"),
        ("b_s", tmp_path / "b" / "s.nii.gz"),
    ]
    assert caplog.text.count("is in the inputs twice; it is read once, as s") == 2

def test_dicom_series_folder_is_one_record(tmp_path: Path) -> None:
    folder = _dicom_series(tmp_path / "patient" / "t1_mprage")
    _nifti(tmp_path / "patient" / "extra.nii.gz")
    records = discover([tmp_path])
    assert [(r.subject_id, r.source, r.path) for r in records] == [
        ("extra", "file", tmp_path / "patient" / "extra.nii.gz"),
        ("t1_mprage", "dicom", folder),
    ]
