"""The predictions table: fixed columns, atomic rewrites as batches finish, resume and merge."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from ermoe_ba.atomic import atomic_path

__all__ = ["PREDICTION_COLUMNS", "PredictionTable", "merge_tables", "read_table", "write_table_atomic"]

PREDICTION_COLUMNS = (
    "subject_id",
    "path",
    "predicted_age",
    "age",
    "brain_age_gap",
    "brain_age_gap_corrected",
    "qc_score",
    "status",
    "error",
)


def _separator(path: Path) -> str:
    return "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","


def write_table_atomic(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` to CSV/TSV (by suffix) through a temporary file and ``os.replace``."""
    path = Path(path)
    atomic_path(path, lambda tmp: frame.to_csv(tmp, sep=_separator(path), index=False, float_format="%.4f"))


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a predictions table written by :func:`write_table_atomic` (empty if absent)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    # only an empty field is missing: subjects named "NA", "nan" or "null" keep their names
    frame = pd.read_csv(
        path,
        sep=_separator(path),
        dtype={"subject_id": str, "path": str, "status": str, "error": str},
        keep_default_na=False,
        na_values=[""],
    )
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a predictions table (missing columns {missing})")
    frame["error"] = frame["error"].fillna("")
    return frame[list(PREDICTION_COLUMNS)]


class PredictionTable:
    """Rows of a prediction run, rewritten atomically to ``path`` after every batch.

    A killed run therefore loses at most the batch in flight; with ``resume=True`` the rows
    already in ``path`` are kept and :meth:`done` tells which scans to skip.

    Examples
    --------
    >>> table = PredictionTable("predictions.csv", resume=True)  # doctest: +SKIP
    >>> todo = [r for r in records if not table.done(r.subject_id, r.path)]  # doctest: +SKIP
    """

    def __init__(self, path: str | Path | None, resume: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        previous = read_table(self.path) if (resume and self.path is not None) else None
        self.rows: list[dict] = [] if previous is None else previous.to_dict("records")
        self._done = {(str(r["subject_id"]), str(r["path"])) for r in self.rows}

    def done(self, subject_id: str, path: str | Path) -> bool:
        """Whether a row for this scan is already in the table (from a previous run)."""
        return (str(subject_id), str(path)) in self._done

    def keep_only(self, predicate: Callable[[dict], bool]) -> None:
        """Forget the rows for which ``predicate`` is false, so their scans count as not done."""
        self.rows = [row for row in self.rows if predicate(row)]
        self._done = {(str(r["subject_id"]), str(r["path"])) for r in self.rows}

    def add(self, rows: Iterable[dict]) -> None:
        """Append rows and rewrite the file."""
        for row in rows:
            self.rows.append({c: row.get(c) for c in PREDICTION_COLUMNS})
            self._done.add((str(row["subject_id"]), str(row["path"])))
        if self.path is not None:
            write_table_atomic(self.frame(), self.path)

    def frame(self) -> pd.DataFrame:
        """The rows so far as a DataFrame with the table's columns."""
        frame = pd.DataFrame(self.rows, columns=list(PREDICTION_COLUMNS))
        frame["error"] = frame["error"].fillna("")
        return frame


def merge_tables(parts: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Join part tables (from ``--num-parts`` runs or torchrun ranks), sort by subject id and path,
    and write ``out``; a scan present in several parts keeps its last row."""
    frames = [read_table(part) for part in parts]
    merged = pd.concat(frames, ignore_index=True).drop_duplicates(["subject_id", "path"], keep="last")
    merged = merged.sort_values(["subject_id", "path"], kind="stable").reset_index(drop=True)
    write_table_atomic(merged, out)
    return merged
