"""Synthetic routing traces with known experts per token."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.routing.trace import LayerTrace, RoutingTrace


def _trace(
    top1: np.ndarray, num_experts: int, grid_size: tuple[int, int, int], layer: int = 1, seed: int = 0
) -> RoutingTrace:
    """A trace whose tokens' best expert is ``top1`` ``(b, n)``; the second pick and gates are random."""
    rng = np.random.default_rng(seed)
    top1 = np.atleast_2d(np.asarray(top1, dtype=np.int64))
    second = (top1 + rng.integers(1, num_experts, size=top1.shape)) % num_experts
    index = torch.from_numpy(np.stack([top1, second], axis=-1))
    w1 = torch.from_numpy(rng.uniform(0.5, 1.0, size=top1.shape).astype(np.float32))
    weight = torch.stack([w1, 1 - w1], dim=-1)
    scores = torch.rand(*top1.shape, num_experts)
    return RoutingTrace({layer: LayerTrace(layer, index, weight, scores)}, tuple(grid_size))


@pytest.fixture
def make_trace() -> Callable[..., RoutingTrace]:
    return _trace


@pytest.fixture(scope="session")
def mni_config() -> PreprocessConfig:
    """The default 2 mm model grid (80, 96, 80) that the atlases are resampled onto."""
    return PreprocessConfig()
