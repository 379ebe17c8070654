"""Sharpness changes: stated blur variance, unsharp masking undoes blur, exact sub-voxel shifts,
brain-only normalisation; their use in augmentation and in the CV sensitivity measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ermoe_ba.training.augment import AugmentConfig, BatchAugment
from ermoe_ba.training.sensitivity import PERTURBATIONS, prediction_shifts
from ermoe_ba.training.sharpness import change_sharpness, fractional_shift, gaussian_taps


def _brain(shape=(24, 24, 24), margin: int = 4) -> torch.Tensor:
    """A constant cube of brain inside zero background."""
    x = torch.zeros(1, 1, *shape)
    x[0, 0, margin:-margin, margin:-margin, margin:-margin] = 1.0
    return x


def _smooth_brain(seed: int = 0) -> torch.Tensor:
    """Brain with structure a few voxels wide (smoothed noise), intensities kept away from 0."""
    x = _brain((28, 28, 28))
    noise = torch.randn(1, 1, 28, 28, 28, generator=torch.Generator().manual_seed(seed))
    smooth = change_sharpness(torch.where(x > 0, noise + 10.0, x), 2.0) - 10.0
    return torch.where(x > 0, 3.0 + smooth, x)


def _gradient_energy(x: torch.Tensor) -> float:
    return float(sum((torch.diff(x[0, 0, 6:-6, 6:-6, 6:-6], dim=d) ** 2).mean() for d in range(3)))


@pytest.mark.parametrize("variance", [0.1, 0.25, 0.5])
def test_blur_adds_the_stated_variance_along_every_axis(variance):
    x = _brain((21, 21, 21), margin=1)
    x[0, 0, 10, 10, 10] += 1.0  # unit impulse on a constant brain
    response = torch.where(x[0, 0] > 0, change_sharpness(x, variance)[0, 0] - 1.0, 0.0)
    offsets = torch.arange(21.0) - 10
    for axis in range(3):
        profile = response.sum(dim=tuple(d for d in range(3) if d != axis))
        assert float(profile.sum()) == pytest.approx(1.0, abs=1e-4)
        assert float((profile * offsets**2).sum()) == pytest.approx(variance, rel=0.08)  # kernel cut at 3 sd


def test_constant_brain_stays_constant_to_its_edge_and_background_stays_zero():
    x = _brain() * 5.0
    for y in (change_sharpness(x, 0.5), change_sharpness(x, -0.25), fractional_shift(x, (0.4, -0.3, 0.7))):
        torch.testing.assert_close(y[x > 0], x[x > 0])
        assert torch.equal(y[x == 0], torch.zeros_like(y[x == 0]))


def test_sharpening_undoes_most_of_an_equal_blur():
    x = _smooth_brain()
    blurred = change_sharpness(x, 0.25)
    restored = change_sharpness(blurred, -0.25)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(6, -6))
    error_blurred = (blurred - x)[inner].abs().mean()
    error_restored = (restored - x)[inner].abs().mean()
    assert error_restored < 0.35 * error_blurred
    assert _gradient_energy(blurred) < _gradient_energy(x) < _gradient_energy(change_sharpness(x, -0.25))


def test_fractional_shift_moves_a_ramp_by_exactly_the_offset():
    x = _brain((16, 16, 16), margin=1)
    ramp = torch.arange(16.0).view(16, 1, 1).expand(16, 16, 16)
    x = x * (ramp + 10.0)
    y = fractional_shift(x, (0.3, 0.0, 0.0))
    torch.testing.assert_close(y[0, 0, 3:-2, 2:-2, 2:-2], x[0, 0, 3:-2, 2:-2, 2:-2] - 0.3)
    with pytest.raises(ValueError, match="fractional shifts"):
        fractional_shift(x, (1.0, 0.0, 0.0))


def test_gaussian_taps_are_a_normalised_symmetric_kernel():
    assert gaussian_taps(0.0) == {0: 1.0}
    taps = gaussian_taps(1.0)
    assert sum(taps.values()) == pytest.approx(1.0)
    assert all(taps[o] == pytest.approx(taps[-o]) for o in taps)


def test_blur_augmentation_blurs_or_sharpens_every_drawn_sample_and_is_off_by_default():
    x = torch.cat([_smooth_brain(seed) for seed in range(3)])
    base = AugmentConfig(shift=0)
    assert base.blur_prob == 0 and torch.equal(BatchAugment(base, seed=1)(x.clone()), x)
    blurred = BatchAugment(AugmentConfig(shift=0, blur_prob=1.0, blur_variance=(0.4, 0.5)), seed=1)(x.clone())
    sharpened = BatchAugment(AugmentConfig(shift=0, blur_prob=1.0, blur_variance=(-0.25, -0.2)), seed=1)(x.clone())
    for i in range(3):
        energy = _gradient_energy(x[i : i + 1])
        assert _gradient_energy(blurred[i : i + 1]) < 0.8 * energy
        assert _gradient_energy(sharpened[i : i + 1]) > 1.2 * energy
    assert torch.equal(blurred[x == 0], torch.zeros_like(blurred[x == 0]))
    with pytest.raises(ValueError, match="low <= high"):
        AugmentConfig(blur_variance=(0.5, -0.5))


def test_prediction_shifts_are_zero_for_a_blind_model_and_signed_for_a_sharpness_reader():
    volumes = torch.cat([_smooth_brain(seed) for seed in range(4)]).half()
    blind = prediction_shifts(lambda v: np.full(v.shape[0], 50.0), volumes, batch_size=3)
    assert set(blind) == set(PERTURBATIONS)
    assert all(s == {"mean": 0.0, "mean_abs": 0.0, "max_abs": 0.0} for s in blind.values())

    def sharpness_reader(v: torch.Tensor) -> np.ndarray:  # "older" = blurrier
        return np.array([40.0 - 100.0 * _gradient_energy(v[i : i + 1]) for i in range(v.shape[0])])

    shifts = prediction_shifts(sharpness_reader, volumes, batch_size=3)
    assert shifts["blur"]["mean"] > 0 and shifts["sharpen"]["mean"] < 0 and shifts["half_voxel_shift"]["mean"] > 0
    for entry in shifts.values():
        assert entry["max_abs"] >= entry["mean_abs"] == pytest.approx(abs(entry["mean"]))


def test_subvoxel_augmentation_moves_each_sample_by_its_own_fraction_of_a_voxel():
    x = _brain((16, 16, 16), margin=1).repeat(4, 1, 1, 1, 1)
    x = x * (torch.arange(16.0).view(16, 1, 1) + 10.0)  # a ramp along R, slope 1 per voxel
    y = BatchAugment(AugmentConfig(shift=0, subvoxel_prob=1.0), seed=2)(x.clone())
    moved = (y - x)[:, 0, 3:-3, 3:-3, 3:-3]  # a linear ramp shifted by t reads x - t_R inside
    per_sample = moved.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample))
    offsets = -per_sample[:, 0]
    assert bool((offsets.abs() <= 0.5).all()) and len(set(offsets.tolist())) == 4
    assert torch.equal(y[x == 0], torch.zeros_like(y[x == 0]))
