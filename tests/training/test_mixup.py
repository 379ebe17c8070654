"""Mixup blends scans and ages with one weight per sample, from partners of similar age."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ermoe_ba.training.mixup import LabelMixup


def constant_scans(ages: torch.Tensor) -> torch.Tensor:
    """Scan ``i`` filled with ``ages[i]``: a blend is then consistent iff scan and age got the same weights."""
    return ages.view(-1, 1, 1, 1, 1).expand(-1, 1, 3, 4, 5).clone()


def test_scans_and_ages_are_blended_with_the_same_partner_and_weight():
    ages = torch.tensor([-1.5, -1.4, -0.2, 0.1, 0.9, 1.0, 1.6, 2.0])
    mix = LabelMixup(alpha=1.0, bandwidth=0.5, seed=0)
    for _ in range(20):
        scans, targets = mix(constant_scans(ages), ages)
        torch.testing.assert_close(scans, constant_scans(targets))
        assert not torch.equal(targets, ages)
        assert bool((targets >= ages.min()).all() and (targets <= ages.max()).all())


def test_a_narrow_kernel_picks_the_nearest_age_and_never_the_sample_itself():
    mix = LabelMixup(alpha=0.4, bandwidth=0.1, seed=0)
    probabilities = mix.partner_probabilities(np.array([-2.0, -1.9, 2.0, 2.15]))
    np.testing.assert_allclose(probabilities.sum(1), 1.0)
    assert np.all(np.diag(probabilities) == 0)
    assert probabilities[0, 1] > 0.999 and probabilities[2, 3] > 0.99 and probabilities[3, 2] > 0.99
    uniform = LabelMixup(alpha=0.4, bandwidth=0.0).partner_probabilities(np.array([-2.0, -1.9, 2.0]))
    np.testing.assert_allclose(uniform, [[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def test_an_isolated_age_still_gets_a_partner():
    # exp(-0.5 (40 / 0.01)^2) underflows to 0 for every partner of the first sample
    probabilities = LabelMixup(alpha=0.4, bandwidth=0.01).partner_probabilities(np.array([-20.0, 20.0, 20.5]))
    np.testing.assert_allclose(probabilities[0], [0, 0.5, 0.5])


def test_alpha_zero_leaves_the_batch_alone_and_bad_settings_are_refused():
    scans, ages = torch.randn(4, 1, 2, 2, 2), torch.randn(4)
    out_scans, out_ages = LabelMixup(alpha=0.0, bandwidth=0.5)(scans, ages)
    assert out_scans is scans and out_ages is ages
    with pytest.raises(ValueError, match="must be >= 0"):
        LabelMixup(alpha=-0.1)


def test_a_reloaded_stream_draws_the_same_blends():
    ages = torch.linspace(-1, 1, 6)
    first = LabelMixup(alpha=0.4, bandwidth=0.5, seed=1)
    first(constant_scans(ages), ages)
    saved = first.state_dict()
    expected = first(constant_scans(ages), ages)
    second = LabelMixup(alpha=0.4, bandwidth=0.5, seed=2)
    second.load_state_dict(saved)
    for got, want in zip(second(constant_scans(ages), ages), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
