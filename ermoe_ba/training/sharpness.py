"""Sharpness changes of conformed volumes: Gaussian blur, unsharp masking and sub-voxel shifts.

A scan's sharpness on the 2 mm model grid depends on things unrelated to age: the voxel size it
was acquired at, how conform's resampling falls between its voxels (linear interpolation at a
fractional offset ``t`` blurs by a variance of ``t(1 - t)`` voxel²) and the scanner's own point
spread. Predictions move with it (docs/RESULTS.md, "Sharpness"), so training can draw random
sharpness changes (:class:`~ermoe_ba.training.augment.AugmentConfig` ``blur_prob``) and
cross-validation measures how far each method's test predictions move under fixed ones
(:mod:`ermoe_ba.training.sensitivity`).

Volumes are ``(b, 1, R, A, S)`` brain-masked intensities with background exactly 0. Every
filter here is a normalised convolution inside the brain (``filter(x) / filter(mask)``), so the
zero background does not darken the brain's edge, and the background stays 0. Filters run as
shifted in-place additions along each axis: a 3- to 7-tap CPU ``conv3d`` of an 80x96x80 volume
took ~45 ms, this ~4 ms.
"""

from __future__ import annotations

import math

import torch

__all__ = ["UNSHARP_VARIANCE", "change_sharpness", "fractional_shift", "gaussian_taps"]

UNSHARP_VARIANCE = 0.25  # voxel², variance of the Gaussian an unsharp mask subtracts


def gaussian_taps(variance: float) -> dict[int, float]:
    """Offset -> weight of the discrete Gaussian of ``variance`` voxel² (MONAI's scale-space kernel).

    Examples
    --------
    >>> taps = gaussian_taps(0.25)
    >>> round(sum(taps.values()), 6), round(sum(w * o * o for o, w in taps.items()), 2)
    (1.0, 0.25)
    """
    if variance <= 0:
        return {0: 1.0}
    # imported here: importing MONAI costs seconds, and TrainConfig (read by every checkpoint load)
    # imports this module through the augmentation settings
    from monai.networks.layers.convutils import gaussian_1d

    sigma = math.sqrt(variance)
    # cut at 3 sd, but never closer than 2 voxels: a 3-tap cut loses up to 17 % of a small variance
    truncated = max(3.0, 2.0 / sigma)
    weights = gaussian_1d(torch.tensor(sigma), truncated=truncated, approx="scalespace", normalize=True)
    radius = (weights.numel() - 1) // 2
    return {offset - radius: float(w) for offset, w in enumerate(weights)}


def _filter_axis(x: torch.Tensor, axis: int, taps: dict[int, float]) -> torch.Tensor:
    """``out[i] = Σ_o taps[o] · x[i + o]`` along ``axis``, zero outside the volume."""
    n = x.shape[axis]
    out = x * taps.get(0, 0.0)
    for offset, weight in taps.items():
        if offset == 0 or abs(offset) >= n:
            continue
        if offset > 0:
            out.narrow(axis, 0, n - offset).add_(x.narrow(axis, offset, n - offset), alpha=weight)
        else:
            out.narrow(axis, -offset, n + offset).add_(x.narrow(axis, 0, n + offset), alpha=weight)
    return out


def _masked_filter(x: torch.Tensor, taps_per_axis: list[dict[int, float]]) -> torch.Tensor:
    """Normalised convolution of the brain (``x != 0``) with separable taps; background stays 0."""
    mask = (x != 0).to(x.dtype)
    num, den = x, mask
    for axis, taps in zip(range(2, 5), taps_per_axis, strict=True):
        num, den = _filter_axis(num, axis, taps), _filter_axis(den, axis, taps)
    return torch.where(mask > 0, num / den.clamp_min(1e-6), torch.zeros_like(x))


def change_sharpness(x: torch.Tensor, variance: float) -> torch.Tensor:
    """Blur (``variance > 0``) or sharpen (``variance < 0``) every axis by about ``|variance|`` voxel².

    Blurring convolves with a discrete Gaussian of that variance. Sharpening is an unsharp mask,
    ``x + a · (x - G x)`` with ``G`` of variance :data:`UNSHARP_VARIANCE` and
    ``a = |variance| / UNSHARP_VARIANCE``, which to first order removes a blur of ``|variance|``.

    Examples
    --------
    >>> x = torch.zeros(1, 1, 9, 9, 9); x[0, 0, 2:7, 2:7, 2:7] = 1.0; x[0, 0, 4, 4, 4] = 3.0
    >>> blurred = change_sharpness(x, 0.5)
    >>> bool(blurred[0, 0, 4, 4, 4] < 3.0), float(blurred[0, 0, 0, 0, 0])  # peak spread, background 0
    (True, 0.0)
    """
    if variance == 0:
        return x.clone()
    if variance > 0:
        taps = gaussian_taps(variance)
        return _masked_filter(x, [taps] * 3)
    taps = gaussian_taps(UNSHARP_VARIANCE)
    amount = -variance / UNSHARP_VARIANCE
    return x + amount * (x - _masked_filter(x, [taps] * 3))


def fractional_shift(x: torch.Tensor, offsets: tuple[float, float, float]) -> torch.Tensor:
    """Move the brain by ``offsets`` voxels (each in ``(-1, 1)``) along R, A, S by linear interpolation.

    Resampling at a fractional offset ``t`` also blurs by ``t(1 - t)`` voxel², as conform's own
    resampling does; the brain mask stays where it was.

    Examples
    --------
    >>> x = torch.zeros(1, 1, 4, 4, 4); x[0, 0, 1:3, 1:3, 1:3] = torch.arange(8.0).view(2, 2, 2) + 1
    >>> fractional_shift(x, (0.5, 0.0, 0.0))[0, 0, 2, 1:3, 1].tolist()  # rows 1 and 2 averaged: (1+5)/2, (3+7)/2
    [3.0, 5.0]
    """
    per_axis = []
    for t in offsets:
        if not -1 < t < 1:
            raise ValueError(f"fractional shifts must lie in (-1, 1) voxels, got {offsets}")
        per_axis.append({0: 1.0 - abs(t), (-1 if t > 0 else 1): abs(t)} if t else {0: 1.0})
    return _masked_filter(x, per_axis)
