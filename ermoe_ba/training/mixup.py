"""Mixup for age regression: each scan of a batch blended with a partner of similar age.

Plain mixup (Zhang et al. 2018) blends every sample with a random partner,
``x = λ x_i + (1 - λ) x_j`` and likewise the targets, ``λ ~ Beta(α, α)``. For regression,
C-Mixup (Yao et al. 2022) draws the partner with probability ``∝ exp(-(y_i - y_j)² / 2σ²)``
instead, so that blended targets stay plausible for the blended inputs; ``bandwidth`` is that
``σ`` in the units of the targets (standardised age in training), and 0 means uniform partners.
Partners come from the same batch (never the sample itself), so mixing costs one weighted sum of
the batch and no extra loading.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["LabelMixup"]


class LabelMixup:
    """Blend each sample of a batch with a partner from the same batch, inputs and targets alike.

    Parameters
    ----------
    alpha
        Mixing weights ``λ ~ Beta(alpha, alpha)``, one per sample; 0 turns mixup off.
    bandwidth
        Partner kernel width in target units (C-Mixup); 0 draws partners uniformly.
    seed
        Seeds the partner and weight draws.

    Examples
    --------
    >>> mix = LabelMixup(alpha=0.4, bandwidth=0.5, seed=0)
    >>> x, y = torch.randn(4, 1, 2, 2, 2), torch.tensor([-1.0, -0.9, 1.0, 1.1])
    >>> mixed_x, mixed_y = mix(x, y)
    >>> mixed_x.shape, bool(((mixed_y - y).abs() <= 2.1).all())
    (torch.Size([4, 1, 2, 2, 2]), True)
    """

    def __init__(self, alpha: float, bandwidth: float = 0.0, seed: int = 0) -> None:
        if alpha < 0 or bandwidth < 0:
            raise ValueError(f"mixup alpha={alpha} and bandwidth={bandwidth} must be >= 0")
        self.alpha, self.bandwidth = float(alpha), float(bandwidth)
        self.rng = np.random.default_rng(seed)

    @property
    def enabled(self) -> bool:
        """False when ``alpha`` is 0: :meth:`__call__` then returns its inputs unchanged."""
        return self.alpha > 0

    def partner_probabilities(self, targets: np.ndarray) -> np.ndarray:
        """``(b, b)`` row-stochastic partner probabilities with a zero diagonal."""
        if self.bandwidth > 0:
            gap = targets[:, None] - targets[None, :]
            weight = np.exp(-0.5 * (gap / self.bandwidth) ** 2)
        else:
            weight = np.ones((len(targets), len(targets)))
        np.fill_diagonal(weight, 0.0)
        # a sample whose every partner is far beyond the bandwidth (underflow) gets uniform partners
        weight[weight.sum(1) == 0] = 1.0
        np.fill_diagonal(weight, 0.0)
        return weight / weight.sum(1, keepdims=True)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed copies of the batch ``x`` ``(b, ...)`` and its targets ``y`` ``(b,)``."""
        b = x.shape[0]
        if not self.enabled or b < 2:
            return x, y
        probabilities = self.partner_probabilities(y.detach().cpu().double().numpy())
        partner = torch.as_tensor([self.rng.choice(b, p=row) for row in probabilities], device=x.device)
        lam = torch.as_tensor(self.rng.beta(self.alpha, self.alpha, size=b), dtype=x.dtype, device=x.device)
        shape = (b,) + (1,) * (x.dim() - 1)
        mixed_x = torch.lerp(x[partner], x, lam.view(shape))
        mixed_y = torch.lerp(y[partner], y, lam.to(y.dtype))
        return mixed_x, mixed_y

    def state_dict(self) -> dict[str, Any]:
        """The random stream, to resume a training."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the random stream saved by :meth:`state_dict`."""
        self.rng.bit_generator.state = state["rng"]
