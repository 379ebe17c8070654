"""Patch embedding for 2D and 3D images: one strided convolution, then tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from ermoe_ba.layers._checks import check_positive_int

__all__ = ["PatchEmbed", "spatial_tuple"]


def spatial_tuple(name: str, value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """``value`` as one positive int per spatial axis (an int is repeated); errors name ``name``."""
    values = (value,) * spatial_dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != spatial_dims:
        raise ValueError(f"{name}={value!r} has {len(values)} entries, expected spatial_dims={spatial_dims}.")
    for v in values:
        check_positive_int(name, v)
    return values


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and project each to ``embed_dim``.

    Axis letters: ``b`` batch, ``c`` channels, ``n`` patches (row-major over the patch grid,
    so token ``t`` sits at ``numpy.unravel_index(t, grid_size)``), ``d`` embedding.

    Parameters
    ----------
    img_size
        Spatial size of the input, one entry per spatial axis.
    patch_size
        Patch edge length, an int for a cube or one entry per axis. Must divide ``img_size``.
    in_chans
        Input channels ``c``.
    embed_dim
        Token width ``d``.
    spatial_dims
        2 for images, 3 for volumes.

    Examples
    --------
    >>> embed = PatchEmbed((32, 48, 32), patch_size=16, in_chans=1, embed_dim=64)
    >>> embed.grid_size, embed.num_patches
    ((2, 3, 2), 12)
    >>> embed(torch.zeros(2, 1, 32, 48, 32)).shape
    torch.Size([2, 12, 64])
    """

    def __init__(
        self,
        img_size: Sequence[int],
        patch_size: int | Sequence[int],
        in_chans: int,
        embed_dim: int,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        self.img_size = spatial_tuple("img_size", img_size, spatial_dims)
        self.patch_size = spatial_tuple("patch_size", patch_size, spatial_dims)
        bad = [(i, p) for i, p in zip(self.img_size, self.patch_size, strict=True) if i % p]
        if bad:
            raise ValueError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size} "
                f"(axis sizes {[i for i, _ in bad]} vs patches {[p for _, p in bad]}); "
                "crop or pad the image, or pick a patch size that divides it."
            )
        self.in_chans = check_positive_int("in_chans", in_chans)
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.spatial_dims = spatial_dims
        self.grid_size: tuple[int, ...] = tuple(i // p for i, p in zip(self.img_size, self.patch_size, strict=True))
        self.num_patches = math.prod(self.grid_size)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.proj = conv(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(b, c, *img_size)`` to ``(b, num_patches, embed_dim)``."""
        expected = (self.in_chans, *self.img_size)
        if x.ndim != 2 + self.spatial_dims or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"PatchEmbed expected input of shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}; resample or crop the image to img_size={self.img_size}."
            )
        return rearrange(self.proj(x), "b d ... -> b (...) d")

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, patch_size={self.patch_size}, grid_size={self.grid_size}"
