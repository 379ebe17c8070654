"""Convolutional patch embedding: a few strided convolutions instead of one linear projection.

A stack of ``log2(patch_size)`` stride-2 3x3(x3) convolutions gives the same token grid as
:class:`~ermoe_ba.layers.patch_embed.PatchEmbed` (so routing maps and token geometry are
unchanged) with far fewer parameters and a locality prior, which matters when a transformer
is trained on a hundred scans rather than a million images (the hybrid ViT stem).
``downsample="maxpool"`` builds the stages as SFCN does instead (stride-1 convolution,
BatchNorm, 2x max-pool, ReLU): every voxel of a stage is convolved, at ~8x the cost of the
strided stem per stage, and a 1x1(x1) convolution maps the last stage to the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from ermoe_ba.layers._checks import check_choice
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
    downsample
        ``"stride"``: stride-2 convolutions with BatchNorm and GELU, the last one maps to
        ``embed_dim``; ``"maxpool"``: SFCN stages (conv, BatchNorm, max-pool, ReLU), all
        ``log2(patch)`` of them with ``stem_width · 2**i`` channels, then a 1x1 convolution to
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
        downsample: str = "stride",
    ) -> None:
        super().__init__(img_size, patch_size, in_chans, embed_dim, spatial_dims)
        stages = [int(math.log2(p)) for p in self.patch_size]
        if any(p < 2 or 2**s != p for p, s in zip(self.patch_size, stages, strict=True)):
            raise ValueError(
                f"ConvStemEmbed needs power-of-two patch sizes >= 2, got patch_size={self.patch_size}; "
                "use stem='linear' for other sizes."
            )
        check_choice("downsample", downsample, ("stride", "maxpool"))
        strides = [tuple(2 if i < s else 1 for s in stages) for i in range(max(stages))]
        build = _strided_stages if downsample == "stride" else _pooled_stages
        self.proj = build(spatial_dims, in_chans, embed_dim, stem_width, strides)


def _strided_stages(
    dims: int, in_chans: int, embed_dim: int, width: int, strides: list[tuple[int, ...]]
) -> nn.Sequential:
    """Stride-2 conv (+ BatchNorm, GELU) per stage; the last stage's conv outputs the tokens."""
    conv, norm = (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
    layers: list[nn.Module] = []
    channels = in_chans
    for i, stride in enumerate(strides):
        out = embed_dim if i == len(strides) - 1 else width * 2**i
        layers.append(conv(channels, out, kernel_size=3, stride=stride, padding=1))
        if i < len(strides) - 1:
            layers += [norm(out), nn.GELU()]
        channels = out
    return nn.Sequential(*layers)


def _pooled_stages(
    dims: int, in_chans: int, embed_dim: int, width: int, strides: list[tuple[int, ...]]
) -> nn.Sequential:
    """SFCN stages (conv, BatchNorm, max-pool, ReLU), then a 1x1 conv to the token width."""
    conv, norm, pool = (
        (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
    )
    layers: list[nn.Module] = []
    channels = in_chans
    for i, stride in enumerate(strides):
        out = width * 2**i
        layers += [conv(channels, out, kernel_size=3, padding=1, bias=False), norm(out), pool(stride), nn.ReLU()]
        channels = out
    layers.append(conv(channels, embed_dim, kernel_size=1))
    return nn.Sequential(*layers)
