from __future__ import annotations

import pandas as pd
import pytest

from ermoe_ba.inference.sharding import shard
from ermoe_ba.inference.table import PREDICTION_COLUMNS, PredictionTable, merge_tables, read_table


def _row(sid: str, status: str = "ok", pred: float | None = 40.0) -> dict:
    return {
        "subject_id": sid,
        "path": f"/data/{sid}.nii.gz",
        "predicted_age": pred,
        "age": 38.0,
        "brain_age_gap": None if pred is None else pred - 38.0,
        "brain_age_gap_corrected": None,
        "qc_score": 0.5,
        "status": status,
        "error": "" if status == "ok" else "bad file",
    }


def test_table_is_rewritten_after_each_batch_and_resumes(tmp_path):
    out = tmp_path / "pred.tsv"
    table = PredictionTable(out)
    table.add([_row("a"), _row("b")])
    on_disk = read_table(out)
    assert list(on_disk.columns) == list(PREDICTION_COLUMNS)
    assert on_disk["subject_id"].tolist() == ["a", "b"]
    assert "\t" in out.read_text().splitlines()[0]
    resumed = PredictionTable(out, resume=True)
    assert resumed.done("a", "/data/a.nii.gz") and not resumed.done("c", "/data/c.nii.gz")
    resumed.add([_row("c", status="error", pred=None)])
    final = read_table(out)
    assert final["subject_id"].tolist() == ["a", "b", "c"]
    assert final.loc[2, "error"] == "bad file" and pd.isna(final.loc[2, "predicted_age"])
    assert not list(tmp_path.glob(".*tmp")), "temporary files must not be left behind"


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_subjects_named_like_missing_values_keep_their_names(tmp_path, suffix):
    names = ["NA", "nan", "null", "None", "N/A"]
    out = tmp_path / f"pred{suffix}"
    PredictionTable(out).add([_row(s) for s in names] + [_row("x", status="error", pred=None)])
    table = read_table(out)
    assert table["subject_id"].tolist() == [*names, "x"]
    assert table["path"].tolist() == [f"/data/{s}.nii.gz" for s in [*names, "x"]]
    assert pd.isna(table.loc[5, "predicted_age"]) and table.loc[0, "error"] == ""  # empty fields stay missing
    resumed = PredictionTable(out, resume=True)
    assert all(resumed.done(s, f"/data/{s}.nii.gz") for s in names)  # not predicted again


def test_without_resume_an_old_table_is_replaced(tmp_path):
    out = tmp_path / "pred.csv"
    PredictionTable(out).add([_row("old")])
    PredictionTable(out).add([_row("new")])
    assert read_table(out)["subject_id"].tolist() == ["new"]


def test_merged_parts_equal_one_table(tmp_path):
    rows = [_row(s, pred=40.0 + i) for i, s in enumerate("edcba")]  # every row tells its subject apart
    parts = []
    for part_id in range(2):
        path = tmp_path / f"part{part_id}.csv"
        PredictionTable(path).add(shard(rows, 2, part_id))
        parts.append(path)
    merged = merge_tables(parts, tmp_path / "merged.csv")
    expected = pd.DataFrame(sorted(rows, key=lambda row: row["subject_id"]), columns=list(PREDICTION_COLUMNS))
    expected["brain_age_gap_corrected"] = expected["brain_age_gap_corrected"].astype(float)  # None -> NaN
    pd.testing.assert_frame_equal(merged, expected, check_dtype=False)
    pd.testing.assert_frame_equal(read_table(tmp_path / "merged.csv"), merged)


def test_shard_covers_every_item_once_and_checks_arguments():
    items = list(range(10))
    parts = [shard(items, 3, i) for i in range(3)]
    assert sorted(i for part in parts for i in part) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="part_id"):
        shard(items, 3, 3)


def test_reading_a_foreign_table_names_missing_columns(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_table(path)


def test_merging_a_foreign_table_is_a_usage_error_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from ermoe_ba.cli.main import app

    part = tmp_path / "part0.csv"
    table = PredictionTable(part)
    table.add([_row("s1")])
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    out = tmp_path / "merged.csv"
    result = CliRunner().invoke(app, ["merge", str(part), str(other), "--out", str(out)])
    assert result.exit_code == 2 and f"{other}: not a predictions table" in result.output
    assert not out.exists()
