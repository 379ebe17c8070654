from __future__ import annotations

import numpy as np
import pytest
import torch

from ermoe_ba.layers import PatchEmbed


@pytest.mark.parametrize(
    ("img_size", "patch", "spatial_dims", "grid"),
    [((32, 48), 16, 2, (2, 3)), ((16, 24, 8), (8, 8, 4), 3, (2, 3, 2)), ((12, 12, 12), 6, 3, (2, 2, 2))],
)
def test_shapes_and_grid(img_size, patch, spatial_dims, grid):
    embed = PatchEmbed(img_size, patch, in_chans=2, embed_dim=5, spatial_dims=spatial_dims)
    out = embed(torch.randn(3, 2, *img_size))
    assert embed.grid_size == grid
    assert embed.num_patches == int(np.prod(grid))
    assert out.shape == (3, embed.num_patches, 5)


def test_token_order_matches_unravel_index_and_is_a_linear_map_of_its_patch():
    torch.manual_seed(0)
    embed = PatchEmbed((8, 12, 4), 4, in_chans=1, embed_dim=3)
    x = torch.randn(1, 1, 8, 12, 4)
    out = embed(x)
    weight, bias = embed.proj.weight.reshape(3, -1), embed.proj.bias
    for t in range(embed.num_patches):
        i, j, k = np.unravel_index(t, embed.grid_size)
        patch = x[0, 0, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4, 4 * k : 4 * k + 4].reshape(-1)
        torch.testing.assert_close(out[0, t], weight @ patch + bias, atol=1e-5, rtol=1e-5)


def test_indivisible_size_names_the_values():
    with pytest.raises(ValueError, match=r"img_size=\(30, 32\).*patch_size=\(16, 16\)"):
        PatchEmbed((30, 32), 16, in_chans=1, embed_dim=4, spatial_dims=2)


def test_wrong_input_shape_prints_both_shapes():
    embed = PatchEmbed((16, 16, 16), 8, in_chans=1, embed_dim=4)
    with pytest.raises(ValueError, match=r"\(batch, 1, 16, 16, 16\).*\(2, 1, 16, 16, 8\)"):
        embed(torch.zeros(2, 1, 16, 16, 8))


def test_bad_spatial_dims_and_patch_length():
    with pytest.raises(ValueError, match="spatial_dims"):
        PatchEmbed((8,), 4, 1, 4, spatial_dims=1)
    with pytest.raises(ValueError, match="patch_size"):
        PatchEmbed((8, 8, 8), (4, 4), 1, 4)
