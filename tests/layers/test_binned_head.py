"""The binned regression head and SFCN's soft-label KL loss, against NumPy/SciPy oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import entropy, norm

from ermoe_ba.layers.binned_head import BINNED_SPAN, BinnedRegressionHead, bin_centres, soft_bin_kl_loss


def test_bins_tile_the_span_evenly():
    centres = bin_centres(40).numpy()
    width = 2 * BINNED_SPAN / 40
    np.testing.assert_allclose(np.diff(centres), width, rtol=1e-5)
    assert centres[0] - width / 2 == pytest.approx(-BINNED_SPAN)
    assert centres[-1] + width / 2 == pytest.approx(BINNED_SPAN)
    with pytest.raises(ValueError, match="at least 2 bins"):
        bin_centres(1)


def test_output_is_the_mean_of_the_bin_distribution_then_its_log_probabilities():
    torch.manual_seed(0)
    head = BinnedRegressionHead(6, num_bins=10)
    pooled = torch.randn(4, 6)
    out = head(pooled).detach().numpy()
    logits = head.logits(pooled).detach().numpy()
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(out[:, 1:]), probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out[:, 0], probs @ bin_centres(10).numpy(), rtol=1e-5, atol=1e-6)


def test_kl_loss_matches_scipy_for_a_gaussian_soft_label():
    torch.manual_seed(1)
    head = BinnedRegressionHead(5, num_bins=12)
    out = head(torch.randn(3, 5)).detach()
    targets = torch.tensor([-2.2, 0.1, 1.7])
    centres = bin_centres(12).numpy()
    sigma = 2 * BINNED_SPAN / 12
    expected = []
    for row, target in zip(out.detach().numpy(), targets.numpy(), strict=True):
        label = norm.pdf(centres, loc=target, scale=sigma)
        expected.append(entropy(label / label.sum(), np.exp(row[1:])))  # KL(label || predicted)
    assert float(soft_bin_kl_loss(out, targets)) == pytest.approx(np.mean(expected), rel=1e-4)


def test_predicting_the_soft_label_costs_nothing_and_recovers_the_target():
    targets = torch.tensor([-1.0, 0.0, 0.45, 2.0])
    centres, sigma = bin_centres(48), 2 * BINNED_SPAN / 48
    log_label = torch.log_softmax(-0.5 * ((centres[None] - targets[:, None]) / sigma) ** 2, dim=1)
    out = torch.cat([(log_label.exp() @ centres)[:, None], log_label], dim=1)
    assert float(soft_bin_kl_loss(out, targets)) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(out[:, 0], targets, atol=1e-3, rtol=0)  # well inside the span


def test_training_the_head_moves_its_mean_to_the_targets():
    torch.manual_seed(0)
    features = torch.randn(64, 8)
    targets = features[:, 0].clamp(-2.5, 2.5)  # a target the features carry
    head = BinnedRegressionHead(8, num_bins=30)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    before = (head(features)[:, 0] - targets).abs().mean().item()
    for _ in range(300):
        optimizer.zero_grad()
        soft_bin_kl_loss(head(features), targets).backward()
        optimizer.step()
    after = (head(features)[:, 0] - targets).abs().mean().item()
    assert after < 0.2 < before


def test_kl_loss_refuses_a_plain_regression_output():
    with pytest.raises(ValueError, match="output_bins > 0"):
        soft_bin_kl_loss(torch.zeros(4, 1), torch.zeros(4))
