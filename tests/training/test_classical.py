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


def test_voxels_outside_the_training_brain_are_ignored(synthetic):
    train = np.arange(16)
    model = PcaRidgeBrainAge(factor=2, n_components=6, inner_folds=3)
    model.fit(synthetic.volumes[train], synthetic.ages[train])
    probe = synthetic.volumes[16:].clone()
    before = model.predict(probe)
    probe[:, :, 0, 0, 0] = 1000.0  # a corner voxel that is background in every training scan
    np.testing.assert_allclose(model.predict(probe), before)
    assert model.best_alpha in model.alphas
