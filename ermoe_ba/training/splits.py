"""Subject-level, age-stratified splits: cross-validation folds and train/validation splits.

All scans of one subject land on the same side of every split (``groups`` = subject ids), and
age bins (quantiles of the ages) are balanced across folds, via scikit-learn's
``StratifiedGroupKFold``. Splits depend only on the ages, the groups and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["FoldSplit", "age_bins", "cv_splits", "train_val_split"]


@dataclass(frozen=True)
class FoldSplit:
    """Cohort positions of one cross-validation fold (disjoint by subject)."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (lists of ints)."""
        return {
            "fold": self.fold,
            "train": self.train.tolist(),
            "val": self.val.tolist(),
            "test": self.test.tolist(),
        }


def age_bins(age: ArrayLike, n_bins: int = 5) -> np.ndarray:
    """Quantile bin (0 .. n_bins-1) of every age, for stratification.

    Examples
    --------
    >>> age_bins([20, 30, 40, 50, 60, 70], n_bins=3).tolist()
    [0, 0, 1, 1, 2, 2]
    """
    a = np.asarray(age, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError("age_bins got a missing (NaN) age; drop scans without an age before splitting")
    edges = np.quantile(a, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, a, side="right").astype(np.int64)


def _groups(groups: ArrayLike | None, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape[0] != n:
        raise ValueError(f"groups has {g.shape[0]} entries for {n} scans; pass one subject id per scan")
    return g


def _stratified_group_folds(age: np.ndarray, groups: np.ndarray, n_splits: int, n_bins: int, seed: int):
    bins = age_bins(age, n_bins=min(n_bins, max(1, len(np.unique(groups)) // n_splits)))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(age)), bins, groups))


def train_val_split(
    age: ArrayLike,
    groups: ArrayLike | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    n_bins: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..n-1`` into training and validation, by subject and stratified by age.

    The validation share is ``1 / round(1 / val_fraction)`` of the subjects (one fold of a
    stratified group k-fold), so 0.15 gives about 1/7.

    Examples
    --------
    >>> tr, va = train_val_split(np.linspace(20, 80, 70), val_fraction=0.2, seed=0)
    >>> len(tr), len(va), len(np.intersect1d(tr, va))
    (56, 14, 0)
    """
    a = np.asarray(age, dtype=np.float64).reshape(-1)
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction={val_fraction} must lie in (0, 0.5)")
    k = max(2, round(1.0 / val_fraction))
    g = _groups(groups, a.size)
    if len(np.unique(g)) < k:
        raise ValueError(f"{len(np.unique(g))} subjects are too few for a {val_fraction:.0%} validation split")
    train, val = _stratified_group_folds(a, g, k, n_bins, seed)[0]
    return np.sort(train), np.sort(val)


def cv_splits(
    age: ArrayLike,
    groups: ArrayLike | None = None,
    n_splits: int = 5,
    val_fraction: float = 0.15,
    seed: int = 0,
    n_bins: int = 5,
) -> list[FoldSplit]:
    """K-fold cross-validation by subject, stratified by age bins, each with a validation split.

    The validation scans (for early stopping and the bias correction) come from the training
    part of each fold, never from its test part.

    Examples
    --------
    >>> folds = cv_splits(np.linspace(20, 80, 50), n_splits=5)
    >>> sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(50))
    True
    """
    a = np.asarray(age, dtype=np.float64).reshape(-1)
    g = _groups(groups, a.size)
    if len(np.unique(g)) < n_splits:
        raise ValueError(f"{len(np.unique(g))} subjects are too few for {n_splits}-fold cross-validation")
    folds = []
    for i, (rest, test) in enumerate(_stratified_group_folds(a, g, n_splits, n_bins, seed)):
        tr, va = train_val_split(a[rest], g[rest], val_fraction=val_fraction, seed=seed + 1 + i, n_bins=n_bins)
        folds.append(FoldSplit(i, np.sort(rest[tr]), np.sort(rest[va]), np.sort(test)))
    return folds
