from __future__ import annotations

import pytest
import torch

from ermoe_ba.layers import ConvStemEmbed, PatchEmbed


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
@pytest.mark.parametrize(("img", "patch", "dims"), [((32, 48, 32), 16, 3), ((64, 32), (8, 4), 2)])
def test_conv_stem_gives_the_patch_grid_of_the_linear_embedding(img, patch, dims, downsample):
    conv = ConvStemEmbed(img, patch, in_chans=2, embed_dim=24, spatial_dims=dims, stem_width=4, downsample=downsample)
    linear = PatchEmbed(img, patch, in_chans=2, embed_dim=24, spatial_dims=dims)
    assert conv.grid_size == linear.grid_size
    x = torch.randn(3, 2, *img)
    assert conv(x).shape == linear(x).shape == (3, linear.num_patches, 24)


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
def test_conv_stem_token_depends_only_on_its_neighbourhood(downsample):
    stem = ConvStemEmbed((64, 64, 64), 16, in_chans=1, embed_dim=8, downsample=downsample).eval()
    x = torch.randn(1, 1, 64, 64, 64)
    y = x.clone()
    y[..., 48:, 48:, 48:] += 5.0  # change only the far corner patch
    a, b = stem(x), stem(y)
    changed = (a - b).abs().sum(-1)[0].reshape(4, 4, 4)
    assert changed[3, 3, 3] > 0
    assert torch.all(changed[:2, :2, :2] == 0)  # receptive field stays local


def test_conv_stem_rejects_patch_sizes_that_are_not_powers_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        ConvStemEmbed((48, 48, 48), 12, in_chans=1, embed_dim=8)


def test_maxpool_stem_runs_sfcn_stages_at_full_resolution():
    stem = ConvStemEmbed((32, 32, 32), 8, in_chans=1, embed_dim=12, stem_width=4, downsample="maxpool")
    convs = [m for m in stem.proj if isinstance(m, torch.nn.Conv3d)]
    assert [c.stride for c in convs] == [(1, 1, 1)] * 4  # pooling, not striding, shrinks the grid
    assert [c.out_channels for c in convs] == [4, 8, 16, 12]  # width doubles per stage, 1x1 conv to tokens
    assert sum(isinstance(m, torch.nn.MaxPool3d) for m in stem.proj) == 3


def test_conv_stem_rejects_an_unknown_downsampling():
    with pytest.raises(ValueError, match="downsample"):
        ConvStemEmbed((32, 32, 32), 8, in_chans=1, embed_dim=8, downsample="avgpool")
