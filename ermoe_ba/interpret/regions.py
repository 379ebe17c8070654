"""Expert x atlas-region tables: regional shares, enrichment, mutual information, age trends.

Definitions (voxels of the model grid that lie inside the atlas and are covered by a token;
``c[r, e]`` counts voxels of region ``r`` whose token's top-1 expert is ``e``):

- ``share[r, e] = c[r, e] / Σ_e c[r, e]`` (sums to 1 over experts for every region)
- ``expected_share[e] = Σ_r c[r, e] / Σ_{r, e} c[r, e]`` (the expert's share of in-atlas voxels)
- ``enrichment[r, e] = share[r, e] / expected_share[e]`` (1 = no preference)
- normalised mutual information between the voxel-wise expert and region labels, from the same
  counts: ``MI / mean(H(region), H(expert))`` — scikit-learn's ``normalized_mutual_info_score``
  with its default arithmetic normalisation, computed from the contingency table so that counts
  pooled over subjects give the cohort value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import mutual_info_score

from ermoe_ba.interpret.atlases import Atlas
from ermoe_ba.interpret.tokens import EXPERT_LABEL_OFFSET

__all__ = [
    "TREND_KEYS",
    "age_trends",
    "nmi_from_counts",
    "region_counts",
    "region_nmi",
    "region_table",
    "table_from_counts",
]

TREND_KEYS = ["layer", "atlas", "region_index", "region", "expert"]


def _label_array(expert_labels: np.ndarray | nib.Nifti1Image) -> np.ndarray:
    if isinstance(expert_labels, nib.spatialimages.SpatialImage):
        return np.asarray(expert_labels.dataobj)
    return np.asarray(expert_labels)


def region_counts(expert_labels: np.ndarray | nib.Nifti1Image, atlas: Atlas, num_experts: int) -> np.ndarray:
    """``(regions, e)`` voxel counts: region rows in ``atlas.labels`` order, expert columns.

    ``expert_labels`` is a top-1 label map in the model grid as written by
    :func:`~ermoe_ba.interpret.maps.expert_label_img` (expert ``e`` stored as ``e + 1``, 0 = none).
    """
    experts = _label_array(expert_labels).astype(np.int64) - EXPERT_LABEL_OFFSET
    regions = atlas.data
    if experts.shape != regions.shape:
        raise ValueError(f"expert map {experts.shape} and atlas {atlas.name} {regions.shape} differ in shape")
    if experts.max(initial=-1) >= num_experts:
        raise ValueError(f"expert map holds expert {experts.max()} but num_experts={num_experts}")
    values = atlas.labels["index"].to_numpy()
    order = np.argsort(values)
    row = order[np.searchsorted(values[order], regions).clip(0, len(values) - 1)]  # table row per voxel
    inside = (regions > 0) & (experts >= 0) & np.isin(regions, values)
    flat = row[inside].astype(np.int64) * num_experts + experts[inside]
    return np.bincount(flat, minlength=len(values) * num_experts).reshape(len(values), num_experts)


def table_from_counts(counts: np.ndarray, atlas: Atlas) -> pd.DataFrame:
    """Long table (one row per region and expert) of shares and enrichment from region counts.

    Regions with no voxel in the model grid are left out.
    """
    counts = np.asarray(counts, dtype=np.int64)
    per_region = counts.sum(axis=1)
    total = counts.sum()
    expected = counts.sum(axis=0) / total if total else np.full(counts.shape[1], np.nan)
    keep = per_region > 0
    share = counts[keep] / per_region[keep, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        enrichment = np.where(expected > 0, share / expected, np.nan)
    n_regions, num_experts = share.shape
    labels = atlas.labels[keep].reset_index(drop=True)
    return pd.DataFrame(
        {
            "atlas": atlas.name,
            "region_index": np.repeat(labels["index"].to_numpy(), num_experts),
            "region": np.repeat(labels["name"].to_numpy(), num_experts),
            "expert": np.tile(np.arange(num_experts), n_regions),
            "voxels_region": np.repeat(per_region[keep], num_experts),
            "voxels_routed": counts[keep].ravel(),
            "share": share.ravel(),
            "expected_share": np.tile(expected, n_regions),
            "enrichment": enrichment.ravel(),
        }
    )


def region_table(
    expert_labels: np.ndarray | nib.Nifti1Image | Sequence[np.ndarray | nib.Nifti1Image],
    atlas: Atlas,
    num_experts: int,
) -> pd.DataFrame:
    """Share of each region's voxels routed to each expert, and enrichment over expectation.

    Parameters
    ----------
    expert_labels
        One top-1 label map (``e + 1`` coded) in the model grid, or a list of them (one per
        subject) whose voxel counts are pooled.
    atlas
        From :func:`~ermoe_ba.interpret.atlases.load_atlas` on the same model grid.
    num_experts
        Number of experts of the layer.

    Returns
    -------
    pandas.DataFrame
        Columns ``atlas, region_index, region, expert, voxels_region, voxels_routed, share,
        expected_share, enrichment``; ``share`` sums to 1 over experts within each region.

    Examples
    --------
    >>> table = region_table(label_img, load_atlas("tissue", cfg), 8)  # doctest: +SKIP
    """
    maps = expert_labels if isinstance(expert_labels, (list, tuple)) else [expert_labels]
    counts = sum(region_counts(m, atlas, num_experts) for m in maps)
    return table_from_counts(counts, atlas)


def nmi_from_counts(counts: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of entropies) of a contingency table.

    Equals ``sklearn.metrics.normalized_mutual_info_score`` on the labels the table counts.
    """
    counts = np.asarray(counts, dtype=np.int64)
    counts = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
    if counts.size == 0:
        return float("nan")
    if counts.shape[0] == counts.shape[1] == 1:
        return 1.0  # both labelings are a single class (scikit-learn's convention)
    mi = mutual_info_score(None, None, contingency=counts)
    h_rows = stats.entropy(counts.sum(axis=1))
    h_cols = stats.entropy(counts.sum(axis=0))
    denominator = (h_rows + h_cols) / 2
    return float(mi / denominator) if mi > 0 and denominator > 0 else 0.0


def region_nmi(
    expert_labels: np.ndarray | nib.Nifti1Image | Sequence[np.ndarray | nib.Nifti1Image],
    atlas: Atlas,
    num_experts: int,
) -> float:
    """NMI between voxel-wise top-1 expert and atlas region inside the atlas (pooled if a list)."""
    maps = expert_labels if isinstance(expert_labels, (list, tuple)) else [expert_labels]
    return nmi_from_counts(sum(region_counts(m, atlas, num_experts) for m in maps))


def age_trends(subject_tables: pd.DataFrame, ages: Mapping[str, float]) -> pd.DataFrame:
    """Change of each expert's regional share with age, across subjects.

    Parameters
    ----------
    subject_tables
        Concatenated per-subject region tables with a ``subject_id`` column and the columns in
        ``TREND_KEYS`` plus ``share``.
    ages
        ``{subject id: age in years}``; subjects without a finite age are left out.

    Returns
    -------
    pandas.DataFrame
        ``TREND_KEYS`` plus ``n_subjects``, ``slope_per_decade`` (share units per 10 years, least
        squares), ``intercept``, ``pearson_r`` and ``p_value`` (two-sided, t test with n - 2
        degrees of freedom); NaN where the share does not vary or fewer than 3 subjects have ages.
    """
    age = pd.Series({str(k): float(v) for k, v in ages.items()}, dtype=float)
    keys = [k for k in TREND_KEYS if k in subject_tables.columns]
    wide = subject_tables.pivot_table(index="subject_id", columns=keys, values="share", aggfunc="first")
    age = age.reindex(wide.index.astype(str))
    keep = np.isfinite(age.to_numpy())
    x = age.to_numpy()[keep]
    y = wide.to_numpy(dtype=float)[keep]
    n = len(x)
    out = wide.columns.to_frame(index=False)
    out["n_subjects"] = n
    if n < 3:
        for col in ("slope_per_decade", "intercept", "pearson_r", "p_value"):
            out[col] = np.nan
        return out
    xc = x - x.mean()
    yc = y - y.mean(axis=0)
    sxx = (xc**2).sum()
    syy = (yc**2).sum(axis=0)
    sxy = xc @ yc
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(sxx > 0, sxy / sxx, np.nan)
        r = np.where((syy > 0) & (sxx > 0), sxy / np.sqrt(sxx * syy), np.nan)
        r = np.clip(r, -1.0, 1.0)
        t = r * np.sqrt((n - 2) / np.maximum(1.0 - r**2, 1e-300))
    out["slope_per_decade"] = 10.0 * slope
    out["intercept"] = y.mean(axis=0) - slope * x.mean()
    out["pearson_r"] = r
    out["p_value"] = np.where(np.isfinite(r), 2.0 * stats.t.sf(np.abs(t), n - 2), np.nan)
    return out
