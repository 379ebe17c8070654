"""Age-bias correction of brain-age predictions, fitted on training data only.

Predictions regress towards the training mean (young brains predicted older, old ones younger).
The usual linear correction (Smith et al. 2019; de Lange & Cole 2020) fits
``predicted = slope * age + intercept`` on data the model did not score at test time and
inverts it: ``corrected = (predicted - intercept) / slope``. Fitting it on the test subjects
leaks their ages into their corrected predictions, so :func:`fit_bias_correction` takes index
sets and refuses any overlap with the held-out indices. A model trained on every scan has no
validation scans to calibrate on; :func:`bias_correction_from_table` fits its correction on
held-out predictions of the same recipe instead (the out-of-fold predictions of a
cross-validation: ``<method>/out_of_fold.csv`` of the CV pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CALIBRATION_COLUMNS",
    "MIN_SLOPE",
    "AgeBiasCorrection",
    "BiasLeakageError",
    "bias_correction_from_table",
    "fit_bias_correction",
]

CALIBRATION_COLUMNS = ("age", "predicted_age")
"""Columns a calibration table needs (the names ``ermoe-ba evaluate`` writes)."""

MIN_SLOPE = 0.1
"""Fitted slopes below this are not inverted: dividing by them would blow up the noise."""


class BiasLeakageError(ValueError):
    """The bias correction was asked to fit on held-out (test) scans."""


@dataclass(frozen=True)
class AgeBiasCorrection:
    """A linear age-bias correction ``corrected = (predicted - intercept) / slope``.

    The identity (slope 1, intercept 0) is what an untrained or uncalibrated model stores.

    Examples
    --------
    >>> c = AgeBiasCorrection.fit([20, 40, 60], [30, 40, 50])
    >>> c.slope, c.intercept
    (0.5, 20.0)
    >>> c.apply([30, 50]).tolist()
    [20.0, 60.0]
    """

    slope: float = 1.0
    intercept: float = 0.0
    n: int = 0
    fitted_on: str = "none"

    @classmethod
    def fit(cls, age: ArrayLike, predicted: ArrayLike, fitted_on: str = "calibration") -> AgeBiasCorrection:
        """Least-squares fit of ``predicted`` on ``age``; both 1D and of equal length."""
        t = np.asarray(age, dtype=np.float64).reshape(-1)
        p = np.asarray(predicted, dtype=np.float64).reshape(-1)
        if t.shape != p.shape or t.size < 3:
            raise ValueError(f"the bias correction needs >= 3 paired ages and predictions, got {t.size} and {p.size}")
        if np.ptp(t) == 0:
            raise ValueError("the bias correction needs scans of different ages; all calibration ages are equal")
        slope, intercept = np.polyfit(t, p, deg=1)
        if slope < MIN_SLOPE:
            raise ValueError(
                f"fitted prediction-vs-age slope {slope:.3f} is below {MIN_SLOPE}: the model barely tracks "
                "age on the calibration scans, so inverting the fit would amplify noise. Train longer or "
                "use more calibration scans."
            )
        return cls(float(slope), float(intercept), int(t.size), fitted_on)

    def apply(self, predicted: ArrayLike) -> np.ndarray:
        """Corrected ages for raw predictions (any shape)."""
        return (np.asarray(predicted, dtype=np.float64) - self.intercept) / self.slope

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AgeBiasCorrection:
        """Inverse of :meth:`to_dict`; ``None`` gives the identity."""
        return cls(**data) if data else cls()


def fit_bias_correction(
    age: ArrayLike,
    predicted: ArrayLike,
    indices: Sequence[int] | np.ndarray,
    held_out: Sequence[int] | np.ndarray = (),
    fitted_on: str = "validation",
) -> AgeBiasCorrection:
    """Fit the correction on ``age[indices]`` / ``predicted[indices]``, never on ``held_out``.

    Parameters
    ----------
    age, predicted
        Arrays over the whole cohort (NaN allowed outside ``indices``).
    indices
        Cohort positions of the calibration scans (training or validation subjects).
    held_out
        Positions of test scans; any overlap with ``indices`` raises :class:`BiasLeakageError`.

    Examples
    --------
    >>> fit_bias_correction([20, 40, 60, 80], [30, 40, 50, 0], indices=[0, 1, 2], held_out=[3]).slope
    0.5
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    leak = np.intersect1d(idx, np.asarray(held_out, dtype=np.int64))
    if leak.size:
        raise BiasLeakageError(
            f"bias correction asked to fit on {leak.size} held-out scan(s) "
            f"(positions {leak[:5].tolist()}...); "
            "fit it on training/validation scans only"
        )
    t = np.asarray(age, dtype=np.float64)[idx]
    p = np.asarray(predicted, dtype=np.float64)[idx]
    return AgeBiasCorrection.fit(t, p, fitted_on=fitted_on)


def bias_correction_from_table(path: str | Path) -> AgeBiasCorrection:
    """Fit the correction on a CSV/TSV table of held-out predictions.

    Parameters
    ----------
    path
        A table with the columns ``age`` and ``predicted_age`` (other columns are ignored): the
        ``out_of_fold.csv`` a cross-validation writes per method, or the ``predictions.csv`` files
        ``ermoe-ba evaluate`` writes for each test fold, concatenated. Every prediction must come
        from a model that did not train on that scan; rows with a missing value are dropped.

    Raises
    ------
    ValueError
        Naming the file, when it cannot be read, lacks a column, or holds too few usable rows.

    Examples
    --------
    >>> bias_correction_from_table("cv/out_of_fold.csv").slope  # doctest: +SKIP
    0.77
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the calibration table ({err})") from None
    missing = [c for c in CALIBRATION_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: calibration table lacks column(s) {', '.join(missing)}")
    pairs = table[list(CALIBRATION_COLUMNS)].apply(pd.to_numeric, errors="coerce").dropna()
    try:
        return AgeBiasCorrection.fit(pairs["age"], pairs["predicted_age"], fitted_on=f"{path.name} (held-out)")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
