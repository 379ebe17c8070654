"""Convolutional patch embedding: a few strided convolutions instead of one linear projection.

A stack of ``log2(patch_size)`` stride-2 3x3(x3) convolutions gives the same token grid as
:class:`~ermoe_ba.layers.patch_embed.PatchEmbed` (so routing maps and token geometry are
unchanged) with far fewer parameters and a locality prior, which matters when a transformer
is trained on a hundred scans rather than a million images (the hybrid ViT stem).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from ermoe_ba.layers.patch_embed import PatchEmbed

__all__ = ["ConvStemEmbed"]


class ConvStemEmbed(PatchEmbed):
    """Patch embedding by ``log2(patch)`` stride-2 convolutions with BatchNorm and GELU.

    BatchNorm (as in SFCN) keeps every token a function of its own neighbourhood at inference;
    GroupNorm or LayerNorm over the volume would not.

    Parameters
    ----------
    img_size, patch_size, in_chans, embed_dim, spatial_dims
        As for :class:`~ermoe_ba.layers.patch_embed.PatchEmbed`; every patch edge must be a power
        of two (>= 2).
    stem_width
        Channels of the first convolution; each later stage doubles them, the last maps to
        ``embed_dim``.

    Examples
    --------
    >>> import torch
    >>> stem = ConvStemEmbed((32, 48, 32), patch_size=16, in_chans=1, embed_dim=64)
    >>> stem.grid_size, stem(torch.zeros(2, 1, 32, 48, 32)).shape
    ((2, 3, 2), torch.Size([2, 12, 64]))
    """

    def __init__(
        self,
        img_size: Sequence[int],
        patch_size: int | Sequence[int],
        in_chans: int,
        embed_dim: int,
        spatial_dims: int = 3,
        stem_width: int = 16,
    ) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, spatial_dims)
        stages = [int(math.log2(p)) for p in self.patch_size]
        if any(p < 2 or 2**s != p for p, s in zip(self.patch_size, stages, strict=True)):
            raise ValueError(
                f"ConvStemEmbed needs power-of-two patch sizes >= 2, got patch_size={self.patch_size}; "
                "use stem='linear' for other sizes."
            )
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
        layers: list[nn.Module] = []
        channels = in_chans
        depth = max(stages)
        for i in range(depth):
            stride = tuple(2 if i < s else 1 for s in stages)
            out = embed_dim if i == depth - 1 else stem_width * 2**i
            layers.append(conv(channels, out, kernel_size=3, stride=stride, padding=1))
            if i < depth - 1:
                layers += [norm(out), nn.GELU()]
            channels = out
        self.proj = nn.Sequential(*layers)
