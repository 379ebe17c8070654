"""PCA + ridge baseline: recovers a planted signal; tuning uses training scans only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ermoe_ba.training.classical import PcaRidgeBrainAge, downsample_voxels


def test_downsample_is_block_average():
    x = torch.arange(6 * 6 * 6, dtype=torch.float32).view(1, 1, 6, 6, 6)
    out = downsample_voxels(x, 3)
    assert out.shape == (1, 8)
    assert out[0, 0] == pytest.approx(float(x[0, 0, :3, :3, :3].mean()))


def test_recovers_planted_age_signal(synthetic):
    train, test = np.arange(0, 24, 2), np.arange(1, 24, 2)
    model = PcaRidgeBrainAge(factor=2, n_components=8, inner_folds=3)
    model.fit(synthetic.volumes[train], synthetic.ages[train])
    pred = model.predict(synthetic.volumes[test])
    baseline = np.abs(synthetic.ages[test] - synthetic.ages[train].mean()).mean()
    assert np.abs(pred - synthetic.ages[test]).mean() < 0.5 * baseline
    oof = model.out_of_fold(synthetic.volumes[train], synthetic.ages[train])
    assert oof.shape == (len(train),)
    # out of fold: a scan's prediction never depends on its own age, the other folds' models do
    planted = synthetic.ages[train].copy()
    planted[0] += 30.0
    moved = model.out_of_fold(synthetic.volumes[train], planted)
    assert moved[0] == pytest.approx(oof[0], abs=1e-9)
    assert np.abs(moved - oof).max() > 1.0


def test_voxels_outside_the_training_brain_are_ignored(synthetic):
    train = np.arange(16)
    model = PcaRidgeBrainAge(factor=2, n_components=6, inner_folds=3)
    model.fit(synthetic.volumes[train], synthetic.ages[train])
    probe = synthetic.volumes[16:].clone()
    before = model.predict(probe)
    probe[:, :, 0, 0, 0] = 1000.0  # a corner voxel that is background in every training scan
    np.testing.assert_allclose(model.predict(probe), before)
    assert model.best_alpha in model.alphas


def test_voxel_ridge_module_equals_the_fitted_sklearn_pipeline(synthetic):
    from ermoe_ba.training.classical import voxel_linear_from_pca_ridge

    train = np.arange(0, 24, 2)
    model = PcaRidgeBrainAge(factor=3, n_components=8, inner_folds=3).fit(
        synthetic.volumes[train], synthetic.ages[train]
    )
    module = voxel_linear_from_pca_ridge(model, synthetic.preprocess, target_mean=50.0, target_std=12.0)
    probe = synthetic.volumes[1::2].float()
    probe[:, :, 0, 0, 0] = 5.0  # a voxel dropped at fit time must be read with weight 0 here too
    with torch.no_grad():
        ages = module(probe).output.squeeze(1).double().numpy() * 12.0 + 50.0
    np.testing.assert_allclose(ages, model.predict(probe), atol=1e-3)
    assert float(module.weight.detach().flatten()[0]) == 0.0 and float(module.weight.detach().abs().sum()) > 0


def test_voxel_ridge_refuses_a_grid_it_was_not_fitted_on(synthetic):
    from ermoe_ba.models import PreprocessConfig
    from ermoe_ba.training.classical import voxel_linear_from_pca_ridge

    model = PcaRidgeBrainAge(factor=3, n_components=4, inner_folds=3).fit(synthetic.volumes[:12], synthetic.ages[:12])
    with pytest.raises(ValueError, match="pooled voxels"):
        voxel_linear_from_pca_ridge(model, PreprocessConfig(grid_shape=(36, 36, 36)), 0.0, 1.0)


def test_voxel_ridge_module_stays_in_float32_under_bfloat16_autocast(synthetic):
    from ermoe_ba.training.classical import voxel_linear_from_pca_ridge

    model = PcaRidgeBrainAge(factor=3, n_components=8, inner_folds=3).fit(synthetic.volumes, synthetic.ages)
    module = voxel_linear_from_pca_ridge(model, synthetic.preprocess, target_mean=50.0, target_std=12.0)
    x = synthetic.volumes[:4].float()
    with torch.no_grad():
        plain = module(x).output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = module(x).output
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)
