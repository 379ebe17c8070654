"""A regression head that predicts a distribution over bins of a standardised target.

SFCN (Peng et al. 2021, Medical Image Analysis 68:101871) predicts brain age as a probability
distribution over age bins and trains it with the Kullback-Leibler divergence to a Gaussian
"soft label" centred on the true age; the prediction is the distribution's mean. Here the bins
cover ``[-span, span]`` of the *standardised* target (training mean 0, sd 1), so one head fits
any cohort; a target outside the span is pulled to the nearest end bin's reach.

The head keeps the regression contract of every model: output column 0 is the predicted
(standardised) value, the mean of the distribution, so prediction, ensembling and evaluation
read it as they read a linear head. Columns ``1 ..`` hold the bins' log-probabilities, which
only :func:`soft_bin_kl_loss` reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BINNED_SPAN", "BinnedRegressionHead", "bin_centres", "soft_bin_kl_loss"]

BINNED_SPAN = 3.0
"""Half-width, in standard deviations of the training target, that the bins cover."""


def bin_centres(num_bins: int, span: float = BINNED_SPAN, device: torch.device | None = None) -> torch.Tensor:
    """Centres of ``num_bins`` equal bins over ``[-span, span]``.

    Examples
    --------
    >>> bin_centres(4, span=2.0).tolist()
    [-1.5, -0.5, 0.5, 1.5]
    """
    if num_bins < 2:
        raise ValueError(f"num_bins={num_bins}: a binned head needs at least 2 bins")
    width = 2 * span / num_bins
    return torch.linspace(-span + width / 2, span - width / 2, num_bins, device=device)


class BinnedRegressionHead(nn.Module):
    """Linear layer to bin logits; outputs ``(b, 1 + num_bins)``: the mean, then the log-probabilities.

    Parameters
    ----------
    in_features
        Width of the pooled features.
    num_bins
        Number of bins over ``[-span, span]``.
    span
        Half-width of the binned range in units of the standardised target.

    Examples
    --------
    >>> head = BinnedRegressionHead(8, num_bins=12)
    >>> out = head(torch.randn(3, 8))
    >>> out.shape, bool(out[:, 1:].exp().sum(dim=1).allclose(torch.ones(3)))
    (torch.Size([3, 13]), True)
    """

    def __init__(self, in_features: int, num_bins: int, span: float = BINNED_SPAN) -> None:
        super().__init__()
        self.span = float(span)
        self.register_buffer("centres", bin_centres(num_bins, self.span), persistent=False)
        self.logits = nn.Linear(in_features, num_bins)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(b, in_features) -> (b, 1 + num_bins)``."""
        log_probs = F.log_softmax(self.logits(pooled).float(), dim=-1)
        mean = log_probs.exp() @ self.centres
        return torch.cat([mean[:, None], log_probs], dim=1)


def soft_bin_kl_loss(output: torch.Tensor, target: torch.Tensor, span: float = BINNED_SPAN) -> torch.Tensor:
    """Mean KL divergence from Gaussian soft labels on ``target`` to the head's bin distribution.

    The soft label of a target value is a Gaussian over the bin centres with a standard
    deviation of one bin width, normalised over the bins.

    Parameters
    ----------
    output
        ``(b, 1 + num_bins)`` output of a :class:`BinnedRegressionHead` with the same ``span``.
    target
        ``(b,)`` standardised targets.

    Examples
    --------
    >>> head = BinnedRegressionHead(4, num_bins=10)
    >>> loss = soft_bin_kl_loss(head(torch.randn(2, 4)), torch.tensor([0.0, 1.0]))
    >>> loss.backward()
    >>> bool(loss > 0)
    True
    """
    if output.ndim != 2 or output.shape[1] < 3:
        raise ValueError(
            f"soft_bin_kl_loss needs the (batch, 1 + bins) output of a binned head, got shape "
            f"{tuple(output.shape)}; build the model with output_bins > 0"
        )
    log_probs = output[:, 1:].float()
    centres = bin_centres(log_probs.shape[1], span, device=log_probs.device)
    sigma = 2 * span / log_probs.shape[1]
    soft_labels = torch.softmax(-0.5 * ((centres[None, :] - target.float()[:, None]) / sigma) ** 2, dim=1)
    return F.kl_div(log_probs, soft_labels, reduction="batchmean")
