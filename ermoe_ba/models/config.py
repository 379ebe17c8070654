"""Configuration dataclasses stored in every checkpoint.

``ModelConfig`` describes the network; ``PreprocessConfig`` is the single definition of the
model grid (template, voxel size, grid shape and origin, intensity normalisation) that
preprocessing, the patch embedding and the interpretability mapping all read.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

from ermoe_ba.layers.routers import EIGEN_SCORES

__all__ = ["POOLS", "ROUTERS", "ModelConfig", "PreprocessConfig", "check_choice", "routerless_image_config"]

ROUTERS = ("ermoe", "softmax", "softmax+lbl", "dense")
POOLS = ("mean", "cls", "flatten")


def check_choice(name: str, value: str, allowed: tuple[str, ...] | list[str]) -> str:
    """Return ``value`` if it is in ``allowed``; otherwise raise a ValueError with a hint.

    Examples
    --------
    >>> check_choice("router", "ermoe", ROUTERS)
    'ermoe'
    """
    if value in allowed:
        return value
    import difflib

    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name}={value!r} is not one of {sorted(allowed)}.{hint}")


def _tuple_fields(data: dict[str, Any], cls: type) -> dict[str, Any]:
    """Turn JSON lists back into tuples for fields whose default is a tuple."""
    out = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"unknown {cls.__name__} field {key!r}; known fields: {sorted(names)}")
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


@dataclass
class ModelConfig:
    """Architecture of the shared transformer trunk.

    Parameters
    ----------
    input_type
        ``"image"`` (patch embedding over ``spatial_dims`` axes) or ``"tokens"`` (integer token
        ids through an embedding table).
    spatial_dims
        2 or 3 for images; ignored for tokens.
    router
        ``"ermoe"`` (eigenbasis score), ``"softmax"`` (learned top-k router), ``"softmax+lbl"``
        (softmax router with the Switch load-balancing loss) or ``"dense"`` (no MoE).
    moe_every
        Every ``moe_every``-th block (counting from 1) gets an MoE feed-forward layer.
    expert_hidden
        Hidden width of one expert; ``None`` picks the width that gives the MoE layer the same
        number of *active* parameters per token as the dense ``Mlp``.
    stem
        ``"linear"``: one strided convolution per patch (ViT); ``"conv"``: ``log2(patch_size)``
        stride-2 convolutions (hybrid stem, far fewer parameters, same token grid);
        ``"conv_pool"``: ``log2(patch_size)`` SFCN stages (stride-1 conv, BatchNorm, max-pool,
        ReLU) and a 1x1 conv to ``embed_dim``, about 8x the stem compute of ``"conv"``.
    stem_width
        Channels of the first stem convolution (``"conv"``, ``"conv_pool"``); each stage doubles them.
    input_pool
        Average-pool image inputs by this factor before the patch embedding; ``patch_size``
        still counts input voxels, so the token grid is unchanged. ``2`` trains on 4 mm from
        the 2 mm conformed volumes every method shares (about 5x cheaper with the conv stem).
    pool
        How the head reads the tokens: ``"mean"`` of the patch tokens, a ``"cls"`` token, or
        ``"flatten"``: all patch tokens concatenated, so the linear head has its own weights for
        every position (a position-aware linear readout, like a ridge model on token features;
        the head then has ``num_tokens · embed_dim`` inputs). Measured on the IXI development
        set it did not improve ERMoE-ba and its routing collapsed onto one or two experts
        (``bench/results/probes/README.md``), so brain-age models keep ``"mean"``.
    num_outputs
        Size of the head: 1 for regression, the number of classes for classification, 0 for
        no head (``pre_logits``).
    output_bins
        0: a linear head. ``B > 0`` (regression, ``num_outputs=1``): SFCN's distribution head,
        :class:`~ermoe_ba.layers.binned_head.BinnedRegressionHead` with ``B`` bins over ±3 sd of
        the standardised target, trained with ``TrainConfig(loss="kl_bins")``; its output
        column 0 is still the predicted value.
    drop_rate, head_drop_rate
        Dropout probability after the position embedding, on the attention and MLP outputs and
        on the pooled features before the head (the SFCN CNN has only the last); ``head_drop_rate``
        sets the head's alone (None: ``drop_rate``), e.g. 0.5 as SFCN trains with.
    disjoint_bases
        ERMoE: keep the experts' input bases mutually orthogonal (blocks of one orthonormal
        matrix), so a token's squared scores sum to at most 1 and experts compete for directions.
    score
        ERMoE routing score: ``"subspace"`` (``||V_eᵀx|| / ||x||``, the default) or ``"context"``
        (cosine of ``V_eᵀx`` and ``V_eᵀc``, ``c`` the token's attention output in its block) or
        ``"centered"`` (``||V_eᵀ(x - m)|| / ||x - m||``, ``m`` the layer's running token mean) or
        ``"whitened"`` (the same for ``W (x - m)``, ``W`` the inverse square root of the running,
        shrunk token covariance: routing without the few dominant token directions); see
        :class:`~ermoe_ba.layers.moe.MoELayer`. Ignored by the other routers.
    """

    input_type: str = "image"
    spatial_dims: int = 3
    in_chans: int = 1
    img_size: tuple[int, ...] = (80, 96, 80)
    patch_size: tuple[int, ...] | int = 16
    stem: str = "linear"
    stem_width: int = 16
    input_pool: int = 1
    vocab_size: int = 0
    max_seq_len: int = 0
    causal: bool = False
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    router: str = "ermoe"
    moe_every: int = 2
    num_experts: int = 8
    top_k: int = 2
    expert_rank: int | None = None
    disjoint_bases: bool = False
    expert_hidden: int | None = None
    route_threshold: float | None = None
    balance_loss_weight: float = 0.01
    z_loss_weight: float = 0.0
    dispatch: str = "sorted"
    pool: str = "mean"
    num_outputs: int = 1
    output_bins: int = 0
    drop_rate: float = 0.0
    head_drop_rate: float | None = None
    drop_path_rate: float = 0.0
    score: str = "subspace"

    @property
    def head_dropout(self) -> float:
        """Dropout probability on the pooled features before the head."""
        return self.drop_rate if self.head_drop_rate is None else self.head_drop_rate

    def __post_init__(self) -> None:
        _check_field_types(self)
        check_choice("input_type", self.input_type, ("image", "tokens"))
        check_choice("score", self.score, EIGEN_SCORES)
        check_choice("router", self.router, ROUTERS)
        check_choice("pool", self.pool, POOLS)
        check_choice("stem", self.stem, ("linear", "conv", "conv_pool"))
        if self.input_type == "image" and self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3 for images, got {self.spatial_dims}")
        if self.input_type == "tokens" and (self.vocab_size <= 0 or self.max_seq_len <= 0):
            raise ValueError("token input needs vocab_size > 0 and max_seq_len > 0")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        if self.input_pool < 1:
            raise ValueError(f"input_pool={self.input_pool} must be >= 1 (1 = no pooling)")
        if isinstance(self.patch_size, list):
            self.patch_size = tuple(self.patch_size)
        if self.output_bins and (self.output_bins < 2 or self.num_outputs != 1):
            raise ValueError(
                f"output_bins={self.output_bins} with num_outputs={self.num_outputs}: a binned head "
                "needs at least 2 bins and one regression output (0 = linear head)"
            )

    @property
    def uses_moe(self) -> bool:
        """Whether any block has a mixture-of-experts feed-forward layer."""
        return self.router != "dense"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**_tuple_fields(data, cls))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # NumPy integers too


_TYPE_CHECKS: dict[str, tuple[str, Any]] = {
    "int": ("an integer", _is_int),
    "float": ("a number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "tuple[int, ...]": ("a list of integers", lambda v: isinstance(v, (tuple, list)) and all(map(_is_int, v))),
}


def _check_field_types(config: Any) -> None:
    """Raise ValueError naming the field when a value (e.g. from ``--set key=value``) has the wrong type.

    Annotations are read as text (``"int | None"`` allows None, ``"A | B"`` either); a field
    with an annotation not covered here is not checked.
    """
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        options = [part.strip() for part in str(item.type).split("|")]
        if value is None and "None" in options:
            continue
        checks = [_TYPE_CHECKS[option] for option in options if option in _TYPE_CHECKS]
        if len(checks) == len([o for o in options if o != "None"]) and not any(ok(value) for _, ok in checks):
            wanted = " or ".join(name for name, _ in checks) + (" or null" if "None" in options else "")
            raise ValueError(f"{type(config).__name__}.{item.name}={value!r}: expected {wanted}")


@dataclass
class PreprocessConfig:
    """The model grid and how raw scans are conformed to it.

    The grid is an axis-aligned RAS box in the template's world space (MNI152, mm):
    voxel ``(i, j, k)`` sits at ``grid_origin + voxel_size * (i, j, k)``.

    Parameters
    ----------
    template
        Name of the registration target; ``"mni152_2009"`` is the template nilearn ships.
    voxel_size
        Isotropic spacing of the model grid in mm.
    grid_shape
        Number of voxels along R, A, S.
    grid_origin
        World coordinate (mm) of voxel ``(0, 0, 0)``.
    register
        Affine registration to the template; turn off for scans already in MNI space.
    bias_correction
        N4 bias-field correction before registration.
    bias_shrink
        N4 fits the bias field on a copy shrunk by this factor (see ``match_resolution``).
    brain_mask
        Multiply by the template brain mask after resampling.
    match_resolution
        Conform a scan the same way whatever its voxel size: N4 fits on voxels of about
        ``bias_shrink * voxel_size`` mm, and an axis finer than the grid is blurred before
        resampling with a Gaussian of variance ``(voxel_size² − spacing²) / 4`` mm² (see
        :func:`ermoe_ba.data.sitk_utils.antialiased`), so a 1 mm scan reaches the grid as sharp as
        one stored at ``voxel_size``. A scan stored at ``voxel_size`` conforms identically either way.
    intensity
        ``"robust_zscore"``: inside the brain mask, subtract the median and divide by the
        inter-quartile range scaled to a standard deviation, then clip to ``intensity_clip``.
    """

    template: str = "mni152_2009"
    voxel_size: float = 2.0
    grid_shape: tuple[int, int, int] = (80, 96, 80)
    grid_origin: tuple[float, float, float] = (-80.0, -112.0, -74.0)
    orientation: str = "RAS"
    register: bool = True
    bias_correction: bool = True
    bias_shrink: int = 4
    brain_mask: bool = True
    match_resolution: bool = True
    intensity: str = "robust_zscore"
    intensity_clip: float = 5.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("template", self.template, ("mni152_2009",))
        check_choice("orientation", self.orientation, ("RAS",))
        check_choice("intensity", self.intensity, ("robust_zscore", "none"))
        if not 0.5 <= float(self.voxel_size) <= 8.0:
            raise ValueError(f"voxel_size={self.voxel_size} mm is outside the supported 0.5–8 mm")
        self.grid_shape = tuple(int(s) for s in self.grid_shape)
        self.grid_origin = tuple(float(o) for o in self.grid_origin)
        if len(self.grid_shape) != 3 or len(self.grid_origin) != 3:
            raise ValueError("grid_shape and grid_origin need three values (R, A, S)")

    def grid_affine(self) -> list[list[float]]:
        """The 4×4 voxel-to-world (RAS mm) affine of the model grid, as nested lists."""
        v = float(self.voxel_size)
        ox, oy, oz = self.grid_origin
        return [[v, 0.0, 0.0, ox], [0.0, v, 0.0, oy], [0.0, 0.0, v, oz], [0.0, 0.0, 0.0, 1.0]]

    def cache_key(self) -> str:
        """A short stable hash of every setting, for caching conformed volumes."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**_tuple_fields(data, cls))


def routerless_image_config(
    overrides: dict[str, Any], defaults: dict[str, Any] | None = None
) -> tuple[ModelConfig, PreprocessConfig]:
    """Config of a single-channel 3D image regressor without a router (the CNN and linear peers).

    ``overrides`` may hold ``preprocess`` (a :class:`PreprocessConfig` or its dict; default grid
    otherwise), whose grid becomes ``img_size``, and ``router``, accepted and dropped so that CV
    code can pass it to every model; the rest, over ``defaults``, are :class:`ModelConfig` fields.

    Examples
    --------
    >>> config, _ = routerless_image_config({"router": "ermoe"}, {"drop_rate": 0.5})
    >>> config.router, config.img_size, config.drop_rate
    ('dense', (80, 96, 80), 0.5)
    """
    overrides = dict(overrides)
    preprocess = overrides.pop("preprocess", None) or PreprocessConfig()
    if isinstance(preprocess, dict):
        preprocess = PreprocessConfig.from_dict(preprocess)
    overrides.pop("router", None)
    base = {"input_type": "image", "spatial_dims": 3, "in_chans": 1, "num_outputs": 1, "router": "dense"}
    base["img_size"] = tuple(preprocess.grid_shape)
    return ModelConfig.from_dict({**base, **(defaults or {}), **overrides}), preprocess
