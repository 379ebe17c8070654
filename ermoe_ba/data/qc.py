"""Quality control of a conformed scan: a similarity score and a rule for failed registrations.

The score is the Pearson correlation between the conformed scan and the template inside the
template brain mask. It is reported, not thresholded tightly: on the 133 IXI development scans
it ranges 0.32-0.59 and falls with age (r = -0.33; large ventricles of old brains look less
like the template), so a tight threshold would drop old subjects and bias every age result.

``qc_fail`` is reserved for signs that registration itself failed (:data:`QC_RULE`):

- final Mattes MI above ``max_metric`` (development set: -0.52 to -0.33; a brain registered
  50 mm off ends near -0.05);
- isotropic scale of the similarity stage or the cube root of the affine determinant outside
  ``scale_range`` (development set: 0.80-0.95 of the template);
- anisotropy (largest / smallest singular value of the affine) above ``max_anisotropy``
  (development set: 1.06-1.32);
- a similarity score below ``min_score``: no brain of any age scored under 0.32, while a
  registration 50 mm off scores about 0.0;
- a tissue contrast (:func:`tissue_contrast`, over the brain mask eroded by 10 mm) below
  ``min_contrast``: where the template has deep white matter the scan must be brighter than
  where it has ventricles (development set: robust z difference 1.5-2.0; a head-shaped blob
  with no anatomy: about 0.0, although its outline matches the brain's).

All 133 development scans pass; the thresholds sit well outside their observed ranges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["QC_RULE", "QCRule", "qc_failures", "similarity_score", "tissue_contrast"]


@dataclass(frozen=True)
class QCRule:
    """Thresholds of the failed-registration rule (see the module docstring)."""

    max_metric: float = -0.30
    scale_range: tuple[float, float] = (0.70, 1.10)
    max_anisotropy: float = 1.5
    min_score: float = 0.25
    min_contrast: float = 0.8

    def to_dict(self) -> dict:
        """JSON-serialisable thresholds, stored with every QC table."""
        return asdict(self)


QC_RULE = QCRule()


def similarity_score(volume: np.ndarray, template: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of ``volume`` and ``template`` over the voxels where ``mask`` is true.

    Examples
    --------
    >>> m = np.ones((4, 4, 4), bool); t = np.arange(64.0).reshape(4, 4, 4)
    >>> round(similarity_score(2 * t + 1, t, m), 6)
    1.0
    """
    a = np.asarray(volume, dtype=np.float64)[mask]
    b = np.asarray(template, dtype=np.float64)[mask]
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def tissue_contrast(volume: np.ndarray, template: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``volume`` where the template is brightest (top 15 %, white matter) minus where it
    is darkest (bottom 5 %, ventricles and CSF), inside ``mask``; in the units of ``volume``.

    Examples
    --------
    >>> t = np.linspace(0, 1, 1000).reshape(10, 10, 10); m = np.ones_like(t, bool)
    >>> round(tissue_contrast(2 * t, t, m), 2)
    1.8
    """
    values = np.asarray(template)[mask]
    bright = mask & (template > np.percentile(values, 85))
    dark = mask & (template < np.percentile(values, 5))
    return float(np.asarray(volume)[bright].mean() - np.asarray(volume)[dark].mean())


def qc_failures(
    score: float,
    matrix: np.ndarray | None = None,
    metric: float | None = None,
    scale: float | None = None,
    contrast: float | None = None,
    rule: QCRule = QC_RULE,
) -> list[str]:
    """Reasons why a registration looks failed; an empty list means it passes.

    Parameters
    ----------
    score
        :func:`similarity_score` of the conformed scan.
    matrix
        4x4 template-to-scan RAS matrix (``None`` when registration was off).
    metric, scale
        Final Mattes MI and the similarity stage's scale (``None`` when registration was off).
    contrast
        :func:`tissue_contrast` of the intensity-normalised volume (``None``: not checked).
    """
    reasons = []
    lo, hi = rule.scale_range
    if metric is not None and metric > rule.max_metric:
        reasons.append(f"mutual information {metric:.3f} > {rule.max_metric}")
    if scale is not None and not lo <= scale <= hi:
        reasons.append(f"similarity scale {scale:.3f} outside {lo}-{hi}")
    if matrix is not None:
        singular = np.linalg.svd(np.asarray(matrix)[:3, :3], compute_uv=False)
        det_scale = float(np.prod(singular)) ** (1.0 / 3.0)
        if not lo <= det_scale <= hi:
            reasons.append(f"affine volume scale {det_scale:.3f} outside {lo}-{hi}")
        if singular[0] / singular[-1] > rule.max_anisotropy:
            reasons.append(f"affine anisotropy {singular[0] / singular[-1]:.2f} > {rule.max_anisotropy}")
    if not score >= rule.min_score:
        reasons.append(f"similarity to template {score:.3f} < {rule.min_score}")
    if contrast is not None and not contrast >= rule.min_contrast:
        reasons.append(f"white matter / CSF contrast {contrast:.2f} < {rule.min_contrast}")
    return reasons
