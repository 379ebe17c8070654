"""Age-bias correction: known answers and refusal to fit on held-out scans."""

from __future__ import annotations

import numpy as np
import pytest

from ermoe_ba.training.bias import (
    AgeBiasCorrection,
    BiasLeakageError,
    bias_correction_from_table,
    fit_bias_correction,
)
from ermoe_ba.training.metrics import gap_slope


def test_exact_linear_bias_is_removed():
    age = np.linspace(20, 80, 30)
    pred = 0.6 * age + 18.0
    corr = AgeBiasCorrection.fit(age, pred)
    assert corr.slope == pytest.approx(0.6) and corr.intercept == pytest.approx(18.0)
    np.testing.assert_allclose(corr.apply(pred), age, atol=1e-9)
    assert gap_slope(age, corr.apply(pred)) == pytest.approx(0.0, abs=1e-9)


def test_noisy_bias_slope_is_flattened_on_fresh_data():
    rng = np.random.default_rng(0)
    age_a, age_b = rng.uniform(20, 80, 400), rng.uniform(20, 80, 400)
    pred_a = 0.6 * age_a + 18 + rng.normal(0, 3, 400)
    pred_b = 0.6 * age_b + 18 + rng.normal(0, 3, 400)
    corr = AgeBiasCorrection.fit(age_a, pred_a)
    assert gap_slope(age_b, pred_b) == pytest.approx(-0.4, abs=0.05)
    assert gap_slope(age_b, corr.apply(pred_b)) == pytest.approx(0.0, abs=0.05)


def test_identity_and_round_trip():
    assert AgeBiasCorrection().apply([33.0]).tolist() == [33.0]
    corr = AgeBiasCorrection.fit([20, 40, 60], [30, 40, 50], fitted_on="validation")
    assert AgeBiasCorrection.from_dict(corr.to_dict()) == corr
    assert AgeBiasCorrection.from_dict(None) == AgeBiasCorrection()


def test_flat_predictions_refuse_to_be_inverted():
    with pytest.raises(ValueError, match=r"below 0\.1"):
        AgeBiasCorrection.fit([20, 40, 60, 80], [50, 50.1, 49.9, 50])


def test_fit_on_held_out_positions_raises():
    age = np.linspace(20, 80, 10)
    with pytest.raises(BiasLeakageError, match="held-out"):
        fit_bias_correction(age, age, indices=[0, 1, 2, 3, 9], held_out=[8, 9])


def test_held_out_values_do_not_move_the_fit():
    age = np.linspace(20, 80, 10)
    pred = 0.5 * age + 20
    calib, test = np.arange(7), np.arange(7, 10)
    before = fit_bias_correction(age, pred, calib, held_out=test)
    age2, pred2 = age.copy(), pred.copy()
    age2[test], pred2[test] = 500.0, -300.0  # planted outliers in the test fold
    after = fit_bias_correction(age2, pred2, calib, held_out=test)
    assert before == after


def test_calibration_table_fits_held_out_predictions_and_skips_missing_rows(tmp_path):
    table = tmp_path / "out_of_fold.tsv"
    table.write_text("subject_id\tage\tpredicted_age\na\t20\t30\nb\t40\t40\nc\t60\t50\nd\t80\tn/a\ne\t\t70\n")
    correction = bias_correction_from_table(table)
    assert correction.slope == pytest.approx(0.5) and correction.intercept == pytest.approx(20.0)
    assert correction.n == 3
    assert correction.fitted_on == "out_of_fold.tsv (held-out)"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("age,predicted\n20,30\n40,40\n60,50\n", "lacks column(s) predicted_age"),
        ("age,predicted_age\n20,30\n40,40\n", ">= 3 paired ages"),
    ],
)
def test_bad_calibration_table_names_the_file_and_the_problem(tmp_path, text, problem):
    table = tmp_path / "calib.csv"
    table.write_text(text)
    with pytest.raises(ValueError, match=r"calib\.csv") as err:
        bias_correction_from_table(table)
    assert problem in str(err.value)


def test_missing_calibration_table_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"none\.csv: cannot read"):
        bias_correction_from_table(tmp_path / "none.csv")
