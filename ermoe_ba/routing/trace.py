"""The routing trace: per-layer routing decisions of one forward pass, shaped per sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ermoe_ba.layers.outputs import RoutingInfo

__all__ = ["LayerTrace", "RoutingTrace"]


@dataclass
class LayerTrace:
    """Routing of one MoE layer for a batch.

    Axis letters: ``b`` samples, ``n`` tokens per sample, ``k`` experts per token, ``e`` experts.

    Attributes
    ----------
    layer_index
        Index of the transformer block that holds the MoE layer.
    top_k_index
        ``(b, n, k)`` expert ids, best first.
    top_k_weight
        ``(b, n, k)`` gate weights.
    scores
        ``(b, n, e)`` router scores.
    """

    layer_index: int
    top_k_index: torch.Tensor
    top_k_weight: torch.Tensor
    scores: torch.Tensor

    @property
    def num_experts(self) -> int:
        """Number of experts ``e`` of the layer."""
        return int(self.scores.shape[-1])

    @property
    def top1(self) -> torch.Tensor:
        """``(b, n)`` the best expert of each token."""
        return self.top_k_index[..., 0]

    @classmethod
    def from_info(cls, layer_index: int, info: RoutingInfo, batch: int, prefix: int = 0) -> LayerTrace:
        """Reshape flattened ``RoutingInfo`` to ``(b, n, ...)``, dropping ``prefix`` tokens (e.g. CLS)."""

        def shaped(t: torch.Tensor) -> torch.Tensor:
            return t.detach().reshape(batch, -1, t.shape[-1])[:, prefix:]

        return cls(layer_index, shaped(info.top_k_index), shaped(info.top_k_weight), shaped(info.scores))


@dataclass
class RoutingTrace:
    """Routing decisions of every MoE layer of a model for one batch.

    ``grid_size`` is the token grid of an image model (e.g. ``(5, 6, 5)``) so that token ``t``
    of a sample sits at ``numpy.unravel_index(t, grid_size)``; None for token sequences.
    """

    layers: dict[int, LayerTrace] = field(default_factory=dict)
    grid_size: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, layer_index: int) -> LayerTrace:
        return self.layers[layer_index]

    def __iter__(self):
        return iter(self.layers.values())

    @property
    def layer_indices(self) -> list[int]:
        """Block indices that have MoE layers, in order."""
        return sorted(self.layers)

    def to(self, device: str | torch.device) -> RoutingTrace:
        """A copy with every tensor on ``device``."""
        moved = {
            i: LayerTrace(
                t.layer_index, t.top_k_index.to(device), t.top_k_weight.to(device), t.scores.to(device)
            )
            for i, t in self.layers.items()
        }
        return RoutingTrace(moved, self.grid_size)

    @classmethod
    def concat(cls, traces: list[RoutingTrace]) -> RoutingTrace:
        """Join traces of several batches along the sample axis."""
        if not traces:
            return cls()
        first = traces[0]
        layers = {
            i: LayerTrace(
                i,
                torch.cat([t.layers[i].top_k_index for t in traces]),
                torch.cat([t.layers[i].top_k_weight for t in traces]),
                torch.cat([t.layers[i].scores for t in traces]),
            )
            for i in first.layers
        }
        return cls(layers, first.grid_size)
