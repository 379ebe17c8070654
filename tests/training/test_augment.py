"""Augmentation: invariants (background, identity settings, exact shifts, determinism)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ermoe_ba.training.augment import (
    AugmentConfig,
    BatchAugment,
    mirror_left_right,
    rotate_and_zoom,
    whole_voxel_shift,
)


def _blob(b: int = 3) -> torch.Tensor:
    x = torch.zeros(b, 1, 20, 24, 20)
    x[:, :, 6:14, 8:16, 6:14] = torch.rand(b, 1, 8, 8, 8) * 4 - 2  # brain values of both signs
    return x


@pytest.mark.parametrize("kind", ["fast", "monai"])
def test_all_off_is_identity_and_background_stays_zero(kind):
    x = _blob()
    off = AugmentConfig(kind=kind, shift=0, bias_prob=0, gamma_prob=0, noise_prob=0)
    assert torch.equal(BatchAugment(off)(x), x)
    y = BatchAugment(AugmentConfig(kind=kind, shift=0, bias_prob=1, gamma_prob=1, noise_prob=1), seed=1)(x)
    assert torch.equal(y[x == 0], torch.zeros_like(y[x == 0]))
    assert not torch.allclose(y, x)


def test_shift_moves_content_by_whole_voxels_with_zero_fill():
    x = _blob(1)
    y = whole_voxel_shift(x, torch.tensor([[2, -1, 0]]))
    assert torch.equal(y[0, 0, 8:16, 7:15, 6:14], x[0, 0, 6:14, 8:16, 6:14])
    assert y.abs().sum() == pytest.approx(x.abs().sum())


def _offset_from_centre(x: torch.Tensor) -> torch.Tensor:
    """Centre of mass of ``x`` ``(1, 1, R, A, S)`` in voxels from the grid centre, as (R, A, S)."""
    grids = torch.meshgrid(*(torch.arange(n, dtype=x.dtype) - (n - 1) / 2 for n in x.shape[2:]), indexing="ij")
    weight = x[0, 0].clamp_min(0)
    return torch.stack([(g * weight).sum() / weight.sum() for g in grids])


def test_rotation_is_rigid_in_voxels_on_a_non_cubic_grid():
    x = torch.zeros(1, 1, 24, 36, 20)  # R, A, S: centre (11.5, 17.5, 9.5)
    x[0, 0, 11:13, 23:25, 9:11] = 1.0  # a blob 6 voxels anterior of the centre
    quarter = torch.tensor([[torch.pi / 2, 0.0, 0.0]])  # about the S axis: A and R trade places
    turned = _offset_from_centre(rotate_and_zoom(x, quarter, torch.ones(1)))
    assert turned[1].abs() < 0.05 and turned[2].abs() < 0.05
    assert turned[0].abs() == pytest.approx(6.0, abs=0.05)  # 6 voxels along R, not 6 * 24 / 36
    zoomed = _offset_from_centre(rotate_and_zoom(x, torch.zeros(1, 3), torch.tensor([1.25])))
    assert zoomed.tolist() == pytest.approx([0.0, 7.5, 0.0], abs=0.05)


def test_monai_rotation_is_rigid_in_voxels_on_a_non_cubic_grid():
    x = torch.zeros(1, 1, 24, 36, 20)
    x[0, 0, 11:13, 23:25, 9:11] = 1.0  # 6 voxels anterior of the centre
    config = AugmentConfig(kind="monai", shift=0, affine_prob=1.0, rotate_deg=90.0, scale=0.0)
    offsets = [_offset_from_centre(BatchAugment(config, seed=seed)(x)) for seed in range(4)]
    # turned by up to 90 degrees about every axis, still 6 voxels from the centre (a shear would not keep it)
    assert [float(o.norm()) for o in offsets] == pytest.approx([6.0] * 4, abs=0.1)
    assert all(float((o - torch.tensor([0.0, 6.0, 0.0])).norm()) > 1.0 for o in offsets)


def test_samples_that_draw_no_affine_are_not_resampled():
    x = _blob(8)
    y = BatchAugment(AugmentConfig(shift=0, affine_prob=0.5), seed=0)(x)
    unchanged = [bool(torch.equal(a, b)) for a, b in zip(x, y, strict=True)]
    # an identity resampling would move values by float rounding, so "unchanged" means not resampled
    assert 0 < sum(unchanged) < len(unchanged)


def test_same_seed_same_augmentation_and_shapes_kept():
    x = _blob()
    cfg = AugmentConfig(affine_prob=1.0)
    a, b = BatchAugment(cfg, seed=5)(x), BatchAugment(cfg, seed=5)(x)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, BatchAugment(cfg, seed=6)(x))


@pytest.mark.parametrize("kind", ["fast", "monai"])
def test_gamma_keeps_the_intensity_range_and_order(kind):
    x = _blob(2)
    y = BatchAugment(AugmentConfig(kind=kind, shift=0, bias_prob=0, noise_prob=0, gamma_prob=1.0), seed=0)(x)
    inside = x != 0
    assert y[inside].min() >= x.min() - 1e-5 and y[inside].max() <= x.max() + 1e-5
    order_x = torch.argsort(x[0][inside[0]])
    assert torch.all(torch.diff(y[0][inside[0]][order_x]) >= -1e-5)  # gamma is monotone


def test_unknown_augment_kind_names_the_choices():
    with pytest.raises(ValueError, match="fast"):
        AugmentConfig(kind="fsat")


def test_default_augmentation_is_a_pure_whole_voxel_shift():
    x = _blob(4)
    y = BatchAugment(AugmentConfig(), seed=3)(x)
    offsets = [(i, j, k) for i in range(-4, 5) for j in range(-4, 5) for k in range(-4, 5)]
    for sample in range(4):
        matches = [
            o
            for o in offsets
            if torch.equal(y[sample : sample + 1], whole_voxel_shift(x[sample : sample + 1], torch.tensor([o])))
        ]
        assert matches, f"sample {sample} is not an exact shift of its input (intensities changed)"
    assert not torch.equal(y, x)


@pytest.mark.parametrize("kind", ["fast", "monai"])
def test_flip_lr_mirrors_some_samples_left_right_and_leaves_the_others(kind):
    x = _blob(16)
    x[:, :, 6:10] += 3.0  # one side brighter, so a mirrored sample differs from its input
    before = x.clone()
    y = BatchAugment(AugmentConfig(kind=kind, shift=0, flip_lr=True), seed=0)(x)
    assert torch.equal(x, before)  # the caller's batch is not flipped in place
    mirrored = [torch.allclose(y[i], mirror_left_right(x[i : i + 1])[0], atol=1e-6) for i in range(16)]
    kept = [torch.allclose(y[i], x[i], atol=1e-6) for i in range(16)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # each sample is one or the other
    assert 0 < sum(mirrored) < 16
    assert torch.equal(BatchAugment(AugmentConfig(kind=kind, shift=0), seed=0)(x), x)  # off by default


def test_default_augmentation_is_the_cross_validated_recipe():
    recipe = json.loads((Path(__file__).parents[2] / "pipelines/brain_age_cv/config.json").read_text())
    default = AugmentConfig().to_dict()
    assert {key: default[key] for key in recipe["train"]["augment"]} == recipe["train"]["augment"]
