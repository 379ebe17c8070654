"""QC rule: known answers for each failure sign; the similarity score is a plain masked correlation."""

from __future__ import annotations

import numpy as np

from ermoe_ba.data.qc import QC_RULE, qc_failures, similarity_score, tissue_contrast


def _similarity_matrix(scale: float, stretch: float = 1.0) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([scale, scale, scale * stretch])
    matrix[:3, 3] = [1.0, -20.0, 35.0]
    return matrix


def test_typical_good_registration_passes() -> None:
    # Median values on the IXI development set.
    assert qc_failures(0.51, _similarity_matrix(0.88, 1.2), metric=-0.45, scale=0.88) == []


def test_each_failure_sign_is_reported() -> None:
    good = dict(score=0.5, matrix=_similarity_matrix(0.88), metric=-0.45, scale=0.88)
    cases = {
        "mutual information": dict(metric=-0.1),
        "similarity scale": dict(scale=1.3),
        "affine volume scale": dict(matrix=_similarity_matrix(0.5)),
        "anisotropy": dict(matrix=_similarity_matrix(0.75, 1.9)),
        "similarity to template": dict(score=0.05),
        "contrast": dict(contrast=0.1),
    }
    for word, change in cases.items():
        reasons = qc_failures(**{**good, **change})
        assert len(reasons) >= 1 and any(word in r for r in reasons), (word, reasons)


def test_score_is_not_thresholded_near_the_range_of_old_brains() -> None:
    # Old brains score as low as about 0.32 on the development set: they must pass.
    assert QC_RULE.min_score < 0.3
    assert qc_failures(0.31, None, None, None) == []
    assert qc_failures(float("nan"), None, None, None) != []


def test_similarity_score_is_the_masked_pearson_correlation() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 6, 7, 8))
    mask = rng.random((6, 7, 8)) > 0.5
    expected = np.corrcoef(a[mask], b[mask])[0, 1]
    assert np.isclose(similarity_score(a, b, mask), expected)
    # Outside the mask nothing counts.
    c = a.copy()
    c[~mask] = 1e6
    assert np.isclose(similarity_score(c, b, mask), expected)
    assert similarity_score(np.zeros_like(a), b, mask) == 0.0


def test_tissue_contrast_known_answers() -> None:
    template = np.linspace(0.0, 1.0, 1000).reshape(10, 10, 10)
    mask = np.ones_like(template, dtype=bool)
    # Top 15 % of a uniform ramp averages 0.925, bottom 5 % averages 0.025.
    assert np.isclose(tissue_contrast(template, template, mask), 0.9, atol=0.01)
    assert np.isclose(tissue_contrast(-template, template, mask), -0.9, atol=0.01)
    assert tissue_contrast(np.ones_like(template), template, mask) == 0.0
