from __future__ import annotations

import json

import numpy as np
import pytest

from ermoe_ba.training.posthoc_ensemble import average_fold_predictions, load_fold_results, summarize_ensemble


def _fold(fold: int, ids: list[str], age: list[float], predicted: list[float]) -> dict:
    return {"fold": fold, "subject_ids": ids, "age": age, "predicted": predicted}


def test_ensemble_averages_each_scan_and_scores_the_mean(tmp_path):
    a = [_fold(0, ["s1", "s2"], [20.0, 60.0], [30.0, 50.0]), _fold(1, ["s3", "s4"], [40.0, 70.0], [44.0, 60.0])]
    b = [_fold(1, ["s3", "s4"], [40.0, 70.0], [36.0, 70.0]), _fold(0, ["s1", "s2"], [20.0, 60.0], [20.0, 58.0])]
    for name, member in (("a", a), ("b", b)):
        for result in member:
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"fold{result['fold']}.json").write_text(json.dumps(result))
    folds = average_fold_predictions([load_fold_results(tmp_path / "a"), load_fold_results(tmp_path / "b")])
    assert [f["predicted"] for f in folds] == [[25.0, 54.0], [40.0, 65.0]]
    assert folds[0]["member_mae"] == [10.0, 1.0]
    summary = summarize_ensemble(folds)
    assert summary["fold_mae"] == [5.5, 2.5]
    assert summary["mae"]["mean"] == pytest.approx(4.0)
    pooled = np.abs(np.array([25, 54, 40, 65]) - np.array([20, 60, 40, 70])).mean()
    assert summary["pooled"]["mae"] == pytest.approx(pooled)
    assert [m["mean"] for m in summary["member_mae"]] == pytest.approx([8.5, 1.5])


def test_ensemble_uses_only_the_folds_every_member_finished():
    a = [_fold(0, ["s1"], [20.0], [22.0]), _fold(1, ["s2"], [30.0], [31.0])]
    b = [_fold(1, ["s2"], [30.0], [33.0])]
    folds = average_fold_predictions([a, b])
    assert [f["fold"] for f in folds] == [1]
    assert folds[0]["predicted"] == [32.0]


def test_members_from_other_folds_are_refused():
    a = [_fold(0, ["s1", "s2"], [20.0, 30.0], [22.0, 31.0])]
    b = [_fold(0, ["s1", "s9"], [20.0, 50.0], [22.0, 48.0])]
    with pytest.raises(ValueError, match="fold 0: member 1 tested other scans"):
        average_fold_predictions([a, b])


def test_an_ensemble_needs_two_members_with_a_common_fold(tmp_path):
    a = [_fold(0, ["s1"], [20.0], [22.0])]
    with pytest.raises(ValueError, match="at least two members"):
        average_fold_predictions([a])
    with pytest.raises(ValueError, match="no fold in common"):
        average_fold_predictions([a, [_fold(1, ["s2"], [30.0], [31.0])]])
    with pytest.raises(FileNotFoundError, match="no fold"):
        load_fold_results(tmp_path)
