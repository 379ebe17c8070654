"""An ensemble: several trained models on one input grid whose outputs are averaged.

On ~100 training scans two runs of the same recipe that differ only in their random seed
differ by about a year of MAE on a fold; averaging them removes much of that variance, and
members of different architectures (e.g. two transformer stems) make less correlated errors
still (cross-validated figures in the README). The ensemble behaves like one model: same
``forward`` signature and :class:`~ermoe_ba.models.transformer.ModelOutput`, same grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ermoe_ba.models.transformer import ModelOutput

__all__ = ["ModelEnsemble"]


class ModelEnsemble(nn.Module):
    """Average the outputs of ``members`` (same input grid, outputs and target scaling).

    The routing trace, when asked for, is the first member's: expert identities are not
    comparable across independently trained members, so maps are made from one of them, and
    :attr:`config` and :attr:`grid_size` are the first member's too.

    Parameters
    ----------
    members
        Models with ``forward(x, capture_routing) -> ModelOutput`` whose configs agree on
        ``input_type``, ``spatial_dims``, ``in_chans``, ``img_size`` and ``num_outputs`` (seed
        ensembles share the whole config; other fields, e.g. the stem, may differ). A member
        with a binned head (``output_bins``) contributes its predicted value, column 0.

    Examples
    --------
    >>> from ermoe_ba.models.config import ModelConfig
    >>> from ermoe_ba.models.transformer import MoETransformer
    >>> cfg = ModelConfig(spatial_dims=2, img_size=(16, 16), patch_size=8, embed_dim=16, depth=2, num_heads=2)
    >>> ensemble = ModelEnsemble([MoETransformer(cfg), MoETransformer(cfg)])
    >>> ensemble(torch.randn(3, 1, 16, 16)).output.shape
    torch.Size([3, 1])
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("a ModelEnsemble needs at least one member")
        interfaces = {_interface(getattr(m, "config", None)) for m in members}
        if len(interfaces) > 1:
            raise ValueError(
                "ModelEnsemble members must share one input grid and output size "
                f"(input_type, spatial_dims, in_chans, img_size, num_outputs differ: {sorted(interfaces)})"
            )
        self.members = nn.ModuleList(members)

    @property
    def config(self):
        """The first member's architecture (all of it, for a seed ensemble)."""
        return self.members[0].config

    @property
    def grid_size(self) -> tuple[int, ...] | None:
        """Token grid of the members (None for token inputs or CNNs)."""
        return getattr(self.members[0], "grid_size", None)

    def forward(self, x: torch.Tensor, capture_routing: bool = False) -> ModelOutput:
        """Mean output and auxiliary loss of the members; the first member's routing."""
        outputs = [m(x, capture_routing=capture_routing and i == 0) for i, m in enumerate(self.members)]
        output = torch.stack([_prediction(o.output, m) for o, m in zip(outputs, self.members, strict=True)]).mean(dim=0)
        aux = torch.stack([o.aux_loss for o in outputs]).mean(dim=0)
        return ModelOutput(output, aux, outputs[0].routing)


def _prediction(output: torch.Tensor, member: nn.Module) -> torch.Tensor:
    """The member's predicted value(s): column 0 of a binned head (its bins' log-probabilities are not averaged)."""
    return output[:, :1] if getattr(getattr(member, "config", None), "output_bins", 0) else output


def _interface(config: object) -> tuple:
    """What members must agree on to be averaged: input and output shapes."""
    fields = ("input_type", "spatial_dims", "in_chans", "img_size", "num_outputs")
    return tuple(repr(getattr(config, f, None)) for f in fields)
