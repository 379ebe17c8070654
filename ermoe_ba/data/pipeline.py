"""The conform stages in order, timed: load → N4 → register → anti-alias + resample → mask → normalise → QC.

Raises :class:`~ermoe_ba.data.io.ScanError` for bad input; :class:`~ermoe_ba.data.conform.Conformer`
turns every exception into a result row.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ermoe_ba.data.io import ScanError, load_scan
from ermoe_ba.data.qc import qc_failures, similarity_score, tissue_contrast
from ermoe_ba.data.registration import RegistrationSettings, bias_correct, register
from ermoe_ba.data.sitk_utils import antialiased, array_to_sitk, grid_reference, itk_threads
from ermoe_ba.data.template import grid_core_mask, grid_mask, grid_template, load_template
from ermoe_ba.models.config import PreprocessConfig

__all__ = ["assess_qc", "head_scaled", "normalise_intensity", "registration_settings", "run_pipeline"]


def head_scaled(image: sitk.Image) -> sitk.Image:
    """Shift to non-negative values and scale so the head's 99th percentile is 1 (float32).

    "Head" = voxels brighter than 10 % of the 99.9th percentile: background air is left out, so
    the scale does not depend on the field of view.
    """
    data = sitk.GetArrayViewFromImage(image)
    low = float(data.min())
    top = float(np.percentile(data, 99.9)) - low
    values = data[data - low > 0.1 * top] - low
    scale = float(np.percentile(values, 99)) if values.size else top
    if scale <= 0:
        raise ValueError("no contrast after intensity scaling")
    return sitk.Cast((image - low) * (1.0 / scale), sitk.sitkFloat32)


def registration_settings(config: PreprocessConfig) -> RegistrationSettings:
    """Defaults, overridden by ``config.extra["registration"]`` (field names of RegistrationSettings)."""
    overrides = dict(config.extra.get("registration", {}))
    known = set(RegistrationSettings.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown registration settings {unknown} in PreprocessConfig.extra; known: {sorted(known)}"
        )
    return RegistrationSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def assess_qc(
    volume: np.ndarray,
    score: float,
    matrix: np.ndarray | None,
    metric: float | None,
    scale: float | None,
    config: PreprocessConfig,
) -> list[str]:
    """QC reasons for a conformed volume (see :mod:`ermoe_ba.data.qc`); cheap, so re-run on cache hits.

    The tissue contrast is checked only for ``intensity="robust_zscore"``, the units its
    threshold is written in.
    """
    contrast = None
    if config.intensity == "robust_zscore":
        contrast = tissue_contrast(volume, grid_template(config), grid_core_mask(config))
    return qc_failures(score, matrix if config.register else None, metric, scale, contrast)


def run_pipeline(path: str | Path, config: PreprocessConfig) -> dict[str, Any]:
    """Conform one scan; return volume, qc_score, qc_reasons, metric, transform and stage timings.

    Examples
    --------
    >>> out = run_pipeline("sub-01_T1w.nii.gz", PreprocessConfig())  # doctest: +SKIP
    >>> sorted(out["timings"])  # doctest: +SKIP
    ['bias_correction', 'load', 'registration', 'rest']
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    scan = load_scan(path)
    image = array_to_sitk(scan.data, scan.affine)
    timings["load"] = time.perf_counter() - start

    # N4 and registration run on one thread: multi-threaded sums add up in an order that depends
    # on the thread count, and registration amplifies the difference (a development scan's 1 mm
    # copy landed 0.5 mm and 2.4 y apart with 1 and 2 threads). Parallelism comes from workers.
    with itk_threads(1):
        start = time.perf_counter()
        image = head_scaled(image)
        if config.bias_correction:
            spacing = float(config.voxel_size) if config.match_resolution else None
            image = head_scaled(bias_correct(image, shrink=int(config.bias_shrink), reference_spacing=spacing))
        timings["bias_correction"] = time.perf_counter() - start

        start = time.perf_counter()
        metric = scale = None
        attempts = 0
        if config.register:
            try:
                result = register(image, load_template(config.template), registration_settings(config))
            except ValueError as err:
                raise ScanError(path, f"registration failed: {err}") from None
            transform, matrix = result.transform, result.matrix
            metric, scale, attempts = result.metric, result.scale, result.attempts
        else:
            transform, matrix = sitk.Transform(), np.eye(4)
        timings["registration"] = time.perf_counter() - start

    start = time.perf_counter()
    reference = grid_reference(config.grid_shape, config.grid_affine())
    if config.match_resolution:
        image = antialiased(image, float(config.voxel_size))
    resampled = sitk.Resample(image, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    raw = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    mask = grid_mask(config)
    if not raw[mask].any():
        raise ScanError(path, "the scan does not overlap the template brain after resampling")
    score = similarity_score(raw, grid_template(config), mask)
    volume = normalise_intensity(raw, mask, config)
    reasons = assess_qc(volume, score, matrix, metric, scale, config)
    timings["rest"] = time.perf_counter() - start
    return {
        "volume": np.ascontiguousarray(volume, dtype=np.float32),
        "qc_score": score,
        "qc_reasons": reasons,
        "metric": metric,
        "scale": scale,
        "attempts": attempts if config.register else None,
        "transform": np.asarray(matrix, dtype=np.float64),
        "timings": timings,
        "not_finite_voxels": scan.not_finite_voxels,
    }


def normalise_intensity(volume: np.ndarray, mask: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Robust z-score inside ``mask`` (median, IQR / 1.349), clipped to ``±config.intensity_clip``."""
    out = np.asarray(volume, dtype=np.float32)
    if config.intensity == "robust_zscore":
        values = out[mask]
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        spread = (q3 - q1) / 1.349 or float(values.std()) or 1.0
        out = np.clip((out - median) / spread, -config.intensity_clip, config.intensity_clip)
    if config.brain_mask:
        out = np.where(mask, out, 0.0)
    return out.astype(np.float32)
