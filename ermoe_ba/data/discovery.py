"""Find T1 scans in files, folders, DICOM series folders, BIDS datasets and tables of paths.

Each scan becomes a :class:`ScanRecord` with a stable subject id: the BIDS ``sub[_ses]`` label,
else the file (or DICOM folder) name without extension; ids are made unique within a run.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AGE_RANGE_YEARS",
    "IMAGE_SUFFIXES",
    "MISSING_AGE_MARKERS",
    "DiscoveryError",
    "ScanRecord",
    "discover",
    "read_age_table",
    "subject_id_from_path",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz")
_TABLE_SUFFIXES = (".csv", ".tsv")
_PATH_COLUMNS = ("path", "file", "filename", "image", "t1", "t1w")
_ID_COLUMNS = ("subject_id", "participant_id", "subject", "id")
MISSING_AGE_MARKERS = ("", "n/a", "na", "nan", "none", "null", "unknown", "-", "?")
AGE_RANGE_YEARS = (0.0, 130.0)  # outside it an age is a typo or in other units (months, days)


class DiscoveryError(ValueError):
    """An input that cannot be searched (missing path, unusable table); one-line message."""


@dataclass
class ScanRecord:
    """One scan to conform.

    Attributes
    ----------
    source
        ``"file"``, ``"dicom"``, ``"bids"`` or ``"table"``: how the scan was found.
    session
        BIDS session label (``"ses-01"``) or ``None``.
    """

    subject_id: str
    path: Path
    age: float | None = None
    source: str = "file"
    session: str | None = None


def subject_id_from_path(path: str | Path) -> str:
    """File name without its image extension (``sub-01_T1w.nii.gz`` → ``sub-01_T1w``)."""
    name = Path(path).name
    for suffix in (*IMAGE_SUFFIXES, ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def _read_table(path: Path):
    """The table as text, blank lines dropped; the index is each row's line number in the file."""
    import pandas as pd

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except Exception as err:  # pandas raises many types for malformed text
        raise DiscoveryError(f"{path}: unreadable table ({type(err).__name__}: {err})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    table.index = table.index + 2  # the header is line 1
    return table[(table != "").any(axis=1)]


def _column(table, names: Sequence[str]) -> str | None:
    return next((name for name in names if name in table.columns), None)


def _parse_age(text: str, where: str) -> float | None:
    """Age in years; None for an empty cell or a missing-value marker (``MISSING_AGE_MARKERS``).

    Raises
    ------
    DiscoveryError
        Anything else that is not a number in ``AGE_RANGE_YEARS`` (``where`` names the table and row):
        a typo would otherwise leave the scan's gap empty, or train on a wrong age, without a word.
    """
    cleaned = str(text).strip()
    if cleaned.lower() in MISSING_AGE_MARKERS:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        raise DiscoveryError(f"{where}: age {cleaned!r} is not a number (leave it empty or n/a if unknown)") from None
    low, high = AGE_RANGE_YEARS
    if not (math.isfinite(value) and low <= value <= high):
        raise DiscoveryError(f"{where}: age {cleaned} is not between {low:g} and {high:g} years")
    return value


def read_age_table(path: str | Path) -> dict[str, float]:
    """Ages by subject id from a CSV/TSV (``subject_id`` or ``participant_id``, and ``age`` columns).

    Rows with an empty age or a missing-value marker (``n/a``, ``NA``, ...) are left out.

    Raises
    ------
    DiscoveryError
        The file is missing or unreadable or lacks the columns; an age is not a number of years
        (:data:`AGE_RANGE_YEARS`); one subject has two different ages.

    Examples
    --------
    >>> read_age_table("participants.tsv")  # doctest: +SKIP
    {'sub-01': 34.5, 'sub-02': 61.0}
    """
    path = Path(path)
    if not path.is_file():
        raise DiscoveryError(f"{path}: age table does not exist")
    table = _read_table(path)
    id_col, age_col = _column(table, _ID_COLUMNS), _column(table, ("age",))
    if id_col is None or age_col is None:
        raise DiscoveryError(
            f"{path}: an age table needs a subject id column ({', '.join(_ID_COLUMNS)}) and an 'age' "
            f"column; found {list(table.columns)}"
        )
    ages: dict[str, float] = {}
    for line, sid, age in zip(table.index, table[id_col], table[age_col], strict=True):
        sid = sid.strip()
        value = _parse_age(age, f"{path} line {line} ({sid or 'no id'})")
        if not sid or value is None:
            continue
        if ages.get(sid, value) != value:
            raise DiscoveryError(f"{path}: subject {sid} has two different ages ({ages[sid]:g} and {value:g})")
        ages[sid] = value
    return ages


def _from_table(path: Path) -> list[ScanRecord]:
    table = _read_table(path)
    path_col = _column(table, _PATH_COLUMNS)
    if path_col is None:
        raise DiscoveryError(
            f"{path}: a table of scans needs a path column (one of {', '.join(_PATH_COLUMNS)}); "
            f"found {list(table.columns)}"
        )
    id_col, age_col = _column(table, _ID_COLUMNS), _column(table, ("age",))
    records = []
    for line, row in table.iterrows():
        scan = Path(row[path_col].strip()).expanduser()
        scan = scan if scan.is_absolute() else path.parent / scan
        sid = row[id_col].strip() if id_col and row[id_col].strip() else subject_id_from_path(scan)
        age = _parse_age(row[age_col], f"{path} line {line} ({sid})") if age_col else None
        records.append(ScanRecord(sid, scan, age, "table"))
    return records


def _is_bids(root: Path) -> bool:
    if (root / "dataset_description.json").is_file():
        return True
    return any(root.glob("sub-*/anat")) or any(root.glob("sub-*/ses-*/anat"))


def _from_bids(root: Path) -> list[ScanRecord]:
    ages: dict[str, float] = {}
    participants = root / "participants.tsv"
    if participants.is_file():
        ages = read_age_table(participants)
    records = []
    files = sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii*"))
    for file in sorted(files):
        if not _is_image(file):
            continue
        parts = file.relative_to(root).parts
        subject = parts[0]
        session = parts[1] if parts[1].startswith("ses-") else None
        sid = subject if session is None else f"{subject}_{session}"
        # Several T1w runs in one session: keep the run label so ids stay meaningful.
        run = next((p for p in file.name.split("_") if p.startswith("run-")), None)
        sid = sid if run is None else f"{sid}_{run}"
        records.append(ScanRecord(sid, file, ages.get(subject), "bids", session))
    return records


_NOT_DICOM_SUFFIXES = (".csv", ".tsv", ".json", ".md", ".txt", ".html", ".png", ".jpg", ".pdf", ".py")


def _search_folder(root: Path) -> list[ScanRecord]:
    from ermoe_ba.data.io import is_dicom_dir

    records = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        folder_path = Path(folder)
        images = sorted(f for f in files if _is_image(Path(f)))
        records += [ScanRecord(subject_id_from_path(f), folder_path / f, None, "file") for f in images]
        others = [
            f
            for f in files
            if not _is_image(Path(f)) and not f.startswith(".") and not f.lower().endswith(_NOT_DICOM_SUFFIXES)
        ]
        if others and is_dicom_dir(folder_path):
            records.append(ScanRecord(folder_path.name, folder_path, None, "dicom"))
    return records


def _drop_repeats(records: list[ScanRecord]) -> list[ScanRecord]:
    """The first record of every file: overlapping inputs (a folder and a file in it) name a scan once."""
    first: dict[str, ScanRecord] = {}
    for record in records:
        key = os.path.realpath(record.path)
        if key in first:
            log.warning("%s is in the inputs twice; it is read once, as %s", record.path, first[key].subject_id)
        else:
            first[key] = record
    return list(first.values())


def _unique(records: list[ScanRecord]) -> list[ScanRecord]:
    seen: dict[str, int] = {}
    for record in records:
        base = record.subject_id
        if base in seen:
            # Same file name in two folders: prefix the folder name, then number if still taken.
            candidate = f"{Path(record.path).parent.name}_{base}"
            number = 2
            while candidate in seen:
                candidate = f"{base}-{number}"
                number += 1
            record.subject_id = candidate
        seen[record.subject_id] = 1
    return records


def _apply_ages(records: list[ScanRecord], ages: dict[str, float]) -> None:
    for record in records:
        # Exact id first, else the longest table id that the record id extends with "_"
        # (participant "sub-01" for "sub-01_ses-1"; "IXI013-HH-1212" for "IXI013-HH-1212_T1").
        if record.subject_id in ages:
            record.age = ages[record.subject_id]
            continue
        matches = [key for key in ages if record.subject_id.startswith(f"{key}_")]
        if matches:
            record.age = ages[max(matches, key=len)]


def discover(inputs: Sequence[str | Path], ages: str | Path | None = None) -> list[ScanRecord]:
    """One :class:`ScanRecord` per scan found in ``inputs``, in input order; a file found twice counts once.

    Parameters
    ----------
    inputs
        Image files (any explicitly named file is kept; a non-image fails later with a clear
        error), folders (searched recursively for .nii/.nii.gz/.mgz and DICOM series), BIDS
        datasets (``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``, ages from ``participants.tsv``) and
        CSV/TSV tables with a path column and optional ``subject_id`` and ``age`` columns.
    ages
        Optional table of ``subject_id, age`` that overrides or adds ages.

    Raises
    ------
    DiscoveryError
        For an input that does not exist, a table without a path column, or inputs in which
        no scan is found at all (an empty folder is more likely a wrong path than a batch of none).

    Examples
    --------
    >>> [r.subject_id for r in discover(["bids_root"])]  # doctest: +SKIP
    ['sub-01', 'sub-02_ses-1']
    """
    records: list[ScanRecord] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise DiscoveryError(f"{path}: input does not exist")
        if path.is_file():
            if path.suffix.lower() in _TABLE_SUFFIXES:
                records += _from_table(path)
            else:
                records.append(ScanRecord(subject_id_from_path(path), path, None, "file"))
        elif _is_bids(path):
            records += _from_bids(path)
        else:
            records += _search_folder(path)
    if inputs and not records:
        shown = ", ".join(str(item) for item in inputs)
        raise DiscoveryError(
            f"no scans found in {shown} (looked for .nii, .nii.gz and .mgz files, DICOM series, "
            "BIDS anat/*_T1w images and CSV/TSV tables of paths)"
        )
    records = _drop_repeats(records)
    if ages is not None:
        _apply_ages(records, read_age_table(ages))
    return _unique(records)
