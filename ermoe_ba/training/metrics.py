"""Brain-age regression metrics: accuracy of the prediction and the age dependence of its error.

The *brain-age gap* is ``predicted - chronological``. Regressors shrink towards the training
mean, so the gap falls with age; :func:`gap_slope` measures that, and
:mod:`ermoe_ba.training.bias` removes it with a correction fitted on training data only.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["brain_age_metrics", "gap_slope", "mean_sd", "pearson_r", "regression_metrics"]


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}; pass one prediction per scan")
    if t.size < 2:
        raise ValueError(f"metrics need at least 2 scans, got {t.size}")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("y_true and y_pred must be finite; drop scans without an age or a prediction first")
    return t, p


def pearson_r(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation; NaN when either input is constant.

    Examples
    --------
    >>> round(pearson_r([1, 2, 3], [2, 4, 7]), 4)
    0.9934
    """
    a, b = _pair(x, y)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def gap_slope(age: ArrayLike, predicted: ArrayLike) -> float:
    """Least-squares slope of the brain-age gap ``predicted - age`` against ``age``.

    0 means the error does not depend on age; a model that always predicts the mean has -1.

    Examples
    --------
    >>> gap_slope([20, 40, 60], [30, 40, 50])
    -0.5
    """
    t, p = _pair(age, predicted)
    tc = t - t.mean()
    var = (tc * tc).sum()
    if var == 0:
        return float("nan")
    return float((tc * (p - t)).sum() / var)


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """MAE, RMSE, Pearson r, R² (coefficient of determination), mean gap and gap slope.

    Returns
    -------
    dict
        ``n``, ``mae``, ``rmse``, ``r``, ``r2``, ``mean_gap``, ``gap_slope``.

    Examples
    --------
    >>> m = regression_metrics([20, 40, 60], [22, 38, 63])
    >>> round(m["mae"], 4), round(m["rmse"], 4)
    (2.3333, 2.3805)
    """
    t, p = _pair(y_true, y_pred)
    err = p - t
    ss_tot = ((t - t.mean()) ** 2).sum()
    return {
        "n": int(t.size),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r": pearson_r(t, p),
        "r2": float(1.0 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "mean_gap": float(err.mean()),
        "gap_slope": gap_slope(t, p),
    }


def brain_age_metrics(
    age: ArrayLike, predicted: ArrayLike, corrected: ArrayLike | None = None
) -> dict[str, float | dict[str, float]]:
    """:func:`regression_metrics` of the raw prediction, plus those of the bias-corrected one.

    Parameters
    ----------
    age, predicted
        Chronological and predicted ages.
    corrected
        Bias-corrected predictions (see :class:`~ermoe_ba.training.bias.AgeBiasCorrection`);
        their metrics go under ``"corrected"``.
    """
    out: dict[str, float | dict[str, float]] = dict(regression_metrics(age, predicted))
    if corrected is not None:
        out["corrected"] = regression_metrics(age, corrected)
    return out


def mean_sd(values: ArrayLike) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1) of per-fold numbers, ignoring NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}
