"""SFCN-style 3D CNN brain-age regressor: the convolutional peer of the ERMoE trunk.

A small Simple Fully Convolutional Network in the spirit of Peng et al. (2021, Medical Image
Analysis 68:101871): blocks of conv-BN-ReLU + max-pool, a 1x1x1 conv, global average pooling,
dropout and a linear regression head. The original predicts an age distribution over bins
from 1 mm input; ours regresses one standardised age from the 2 mm model grid, with channels
small enough to train on a CPU (``output_bins=B`` gives it, like any registered model, the
distribution head instead). It follows the same contract as every registered model:
``forward(x, capture_routing=False) -> ModelOutput`` with ``aux_loss = 0`` and no routing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ermoe_ba.models.config import ModelConfig, routerless_image_config
from ermoe_ba.models.heads import build_head
from ermoe_ba.models.registry import register_model
from ermoe_ba.models.transformer import ModelOutput

__all__ = ["SFCN", "sfcn_small", "sfcn_tiny"]


def _conv_block(in_chans: int, out_chans: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv3d(in_chans, out_chans, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(out_chans),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.insert(2, nn.MaxPool3d(2))  # pool before the ReLU, as in SFCN
    return nn.Sequential(*layers)


class SFCN(nn.Module):
    """Simple fully convolutional network for 3D regression.

    Parameters
    ----------
    config
        ``img_size``, ``in_chans``, ``num_outputs`` and ``head_dropout`` are read from it; the
        ``router`` is recorded as ``"dense"``.
    channels
        Output channels of the pooled conv blocks; a 1x1x1 conv with ``channels[-1]`` outputs
        follows them.
    stem_stride
        Stride of an average-pooling stem applied to the input; 2 halves the resolution and
        cuts the cost of the first blocks eightfold (used by the CPU variant).

    Examples
    --------
    >>> cfg = ModelConfig(img_size=(32, 32, 32), router="dense")
    >>> SFCN(cfg, channels=(4, 8))(torch.randn(2, 1, 32, 32, 32)).output.shape
    torch.Size([2, 1])
    """

    def __init__(self, config: ModelConfig, channels: tuple[int, ...] = (8, 16, 32, 64, 64), stem_stride: int = 1):
        super().__init__()
        if config.spatial_dims != 3 or config.input_type != "image":
            raise ValueError(f"SFCN needs 3D image input, got {config.input_type!r} with {config.spatial_dims} dims")
        if min(config.img_size) // stem_stride < 2 ** len(channels):
            raise ValueError(
                f"img_size={config.img_size} with stem_stride={stem_stride} is too small for "
                f"{len(channels)} pooling blocks; use fewer channels or a larger grid"
            )
        self.config = config
        self.channels = tuple(channels)
        self.stem_stride = stem_stride
        self.stem = nn.AvgPool3d(stem_stride) if stem_stride > 1 else nn.Identity()
        widths = (config.in_chans, *channels)
        self.features = nn.Sequential(*(_conv_block(widths[i], widths[i + 1], pool=True) for i in range(len(channels))))
        self.classifier = nn.Sequential(
            nn.Conv3d(channels[-1], channels[-1], kernel_size=1, bias=False),
            nn.BatchNorm3d(channels[-1]),
            nn.ReLU(inplace=True),
        )
        self.head_drop = nn.Dropout(config.head_dropout)
        self.head = build_head(config, channels[-1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, c, r, a, s) -> (b, channels[-1], r', a', s')`` feature maps."""
        return self.classifier(self.features(self.stem(x)))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling: ``(b, c, ...) -> (b, c)``."""
        return features.mean(dim=(2, 3, 4))

    def forward_head(self, pooled: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Dropout then the linear head; ``pre_logits=True`` returns the pooled features."""
        pooled = self.head_drop(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x: torch.Tensor, capture_routing: bool = False) -> ModelOutput:
        """Full forward pass; ``capture_routing`` is accepted for the shared contract (no routing)."""
        out = self.forward_head(self.pool(self.forward_features(x)))
        return ModelOutput(out, out.new_zeros(()), None)


def _sfcn_model(defaults: dict[str, Any], overrides: dict[str, Any]) -> SFCN:
    overrides = dict(overrides)
    channels = tuple(overrides.pop("channels", defaults.pop("channels")))
    stem_stride = int(overrides.pop("stem_stride", defaults.pop("stem_stride")))
    config, preprocess = routerless_image_config(overrides, defaults)
    model = SFCN(config, channels=channels, stem_stride=stem_stride)
    model.default_preprocess = preprocess
    return model


@register_model("sfcn_tiny")
def sfcn_tiny(**overrides: Any) -> SFCN:
    """CPU peer: 2x average-pool stem, channels (8, 16, 32, 64, 64), dropout 0.5, ~0.15 M params."""
    return _sfcn_model({"channels": (8, 16, 32, 64, 64), "stem_stride": 2, "drop_rate": 0.5}, overrides)


@register_model("sfcn_small")
def sfcn_small(**overrides: Any) -> SFCN:
    """GPU preset at full 2 mm resolution: channels (32, 64, 128, 256, 256), dropout 0.5."""
    return _sfcn_model({"channels": (32, 64, 128, 256, 256), "stem_stride": 1, "drop_rate": 0.5}, overrides)
