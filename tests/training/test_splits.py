"""Subject-level, age-stratified splits."""

from __future__ import annotations

import numpy as np
import pytest

from ermoe_ba.training.splits import age_bins, cv_splits, train_val_split


@pytest.fixture
def cohort() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    subjects = np.repeat([f"sub-{i:03d}" for i in range(60)], 2)  # two sessions per subject
    age = np.repeat(rng.uniform(20, 82, 60), 2) + np.tile([0.0, 1.5], 60)
    return age, subjects


def test_folds_partition_the_cohort_by_subject(cohort):
    age, subjects = cohort
    folds = cv_splits(age, subjects, n_splits=5, seed=0)
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(age.size))
    for f in folds:
        parts = [set(subjects[f.train]), set(subjects[f.val]), set(subjects[f.test])]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(f.train) + len(f.val) + len(f.test) == age.size
        assert 0.1 < len(f.val) / (len(f.train) + len(f.val)) < 0.2


def test_folds_are_age_stratified_and_deterministic(cohort):
    age, subjects = cohort
    folds = cv_splits(age, subjects, n_splits=5, seed=0)
    bins = age_bins(age, 5)
    for f in folds:
        counts = np.bincount(bins[f.test], minlength=5)
        assert counts.max() - counts.min() <= 2  # each fold spans the age range evenly
    again = cv_splits(age, subjects, n_splits=5, seed=0)
    assert all(
        np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val) for a, b in zip(folds, again, strict=True)
    )
    other = cv_splits(age, subjects, n_splits=5, seed=1)
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(folds, other, strict=True))


def test_train_val_split_and_errors():
    age = np.linspace(20, 80, 40)
    tr, va = train_val_split(age, val_fraction=0.25, seed=0)
    assert len(va) == 10 and len(np.intersect1d(tr, va)) == 0
    with pytest.raises(ValueError, match="too few"):
        cv_splits(age[:3], n_splits=5)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(age, val_fraction=0.7)
    with pytest.raises(ValueError, match="NaN"):
        age_bins([20.0, np.nan])
