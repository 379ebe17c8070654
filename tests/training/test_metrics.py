"""Metrics against scikit-learn / SciPy reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from ermoe_ba.training.metrics import brain_age_metrics, gap_slope, mean_sd, pearson_r, regression_metrics


@pytest.fixture
def ages() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    age = rng.uniform(20, 80, 57)
    pred = 0.7 * age + 14 + rng.normal(0, 5, age.size)
    return age, pred


def test_regression_metrics_match_sklearn_and_scipy(ages):
    age, pred = ages
    m = regression_metrics(age, pred)
    assert m["n"] == age.size
    assert m["mae"] == pytest.approx(mean_absolute_error(age, pred), rel=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(age, pred)), rel=1e-12)
    assert m["r2"] == pytest.approx(r2_score(age, pred), rel=1e-12)
    assert m["r"] == pytest.approx(stats.pearsonr(age, pred).statistic, rel=1e-12)
    assert m["mean_gap"] == pytest.approx(np.mean(pred - age), rel=1e-12)
    assert m["gap_slope"] == pytest.approx(stats.linregress(age, pred - age).slope, rel=1e-10)


def test_gap_slope_known_answers():
    age = np.array([20.0, 35.0, 50.0, 65.0, 80.0])
    assert gap_slope(age, age) == pytest.approx(0.0)
    assert gap_slope(age, np.full(5, age.mean())) == pytest.approx(-1.0)  # predicting the mean
    assert gap_slope(age, 0.7 * age + 14) == pytest.approx(-0.3)


def test_pearson_constant_is_nan_and_brain_age_metrics_nests_corrected(ages):
    age, pred = ages
    assert np.isnan(pearson_r([1, 2, 3], [5, 5, 5]))
    out = brain_age_metrics(age, pred, corrected=age + 1.0)
    assert out["corrected"]["mae"] == pytest.approx(1.0)
    assert out["mae"] == pytest.approx(mean_absolute_error(age, pred))


def test_bad_input_raises_with_counts():
    with pytest.raises(ValueError, match="3 values but y_pred has 2"):
        regression_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        regression_metrics([1, np.nan, 3], [1, 2, 3])


def test_mean_sd_uses_sample_sd_and_ignores_nan():
    out = mean_sd([1.0, 2.0, 3.0, np.nan])
    assert out == {"mean": 2.0, "sd": pytest.approx(1.0), "n": 3}
