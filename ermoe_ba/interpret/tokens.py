"""Token -> voxel geometry: where each token of the patch grid lies in the model grid.

Token ``t`` of a sample sits at ``numpy.unravel_index(t, grid_size)`` in the patch grid, whose
axes are the image axes R, A, S. With ``p = grid_shape // grid_size`` it covers the voxel box
``[g * p, (g + 1) * p)`` along each axis of the model grid defined by
:class:`~ermoe_ba.models.config.PreprocessConfig`. Voxels past ``grid_size * p`` (when the grid
shape is not a multiple of the patch size) belong to no token and get the fill value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from ermoe_ba.routing.trace import LayerTrace, RoutingTrace

if TYPE_CHECKING:  # only the grid fields are read, so any PreprocessConfig-like object works
    from ermoe_ba.models.config import PreprocessConfig

__all__ = [
    "EXPERT_LABEL_OFFSET",
    "as_trace",
    "grid_image",
    "model_grid_affine",
    "patch_voxels",
    "resolve_layers",
    "select_layers",
    "tokens_to_grid",
]

EXPERT_LABEL_OFFSET = 1
"""Label maps store expert ``e`` as ``e + 1`` so that 0 stays background (nilearn's convention)."""


def model_grid_affine(config: PreprocessConfig) -> np.ndarray:
    """The 4x4 voxel-to-MNI-world affine of the model grid as a float64 array."""
    return np.asarray(config.grid_affine(), dtype=np.float64)


def patch_voxels(config: PreprocessConfig, grid_size: Sequence[int]) -> tuple[int, int, int]:
    """Voxels per token along R, A, S: ``grid_shape // grid_size``.

    Examples
    --------
    >>> from ermoe_ba.models.config import PreprocessConfig
    >>> patch_voxels(PreprocessConfig(), (5, 6, 5))
    (16, 16, 16)
    """
    grid_size = tuple(int(g) for g in grid_size)
    if len(grid_size) != 3 or min(grid_size) < 1:
        raise ValueError(f"grid_size={grid_size} must be three positive token counts (R, A, S)")
    patch = tuple(s // g for s, g in zip(config.grid_shape, grid_size, strict=True))
    if min(patch) < 1:
        raise ValueError(
            f"token grid {grid_size} is larger than the model grid {config.grid_shape}; "
            "pass the PreprocessConfig stored with the model that produced the trace"
        )
    return patch  # type: ignore[return-value]


def tokens_to_grid(
    values: np.ndarray, grid_size: Sequence[int], config: PreprocessConfig, fill: float = 0
) -> np.ndarray:
    """Spread per-token values over the model grid.

    Parameters
    ----------
    values
        ``(n,)`` or ``(n, c)`` with ``n = prod(grid_size)`` tokens in ``unravel_index`` order.
    grid_size
        Token grid ``(gR, gA, gS)``.
    config
        Defines the model grid shape.
    fill
        Value of voxels that no token covers.

    Returns
    -------
    numpy.ndarray
        ``grid_shape`` (or ``grid_shape + (c,)``) array of the dtype of ``values``.

    Examples
    --------
    >>> from ermoe_ba.models.config import PreprocessConfig
    >>> cfg = PreprocessConfig(grid_shape=(4, 2, 2))
    >>> tokens_to_grid(np.array([7, 9]), (2, 1, 1), cfg)[:, 0, 0].tolist()
    [7, 7, 9, 9]
    """
    values = np.asarray(values)
    grid_size = tuple(int(g) for g in grid_size)
    patch = patch_voxels(config, grid_size)
    n = int(np.prod(grid_size))
    if values.shape[0] != n:
        raise ValueError(f"got {values.shape[0]} token values but the token grid {grid_size} has {n} tokens")
    blocks = values.reshape(grid_size + values.shape[1:])
    for axis, p in enumerate(patch):
        blocks = np.repeat(blocks, p, axis=axis)
    out = np.full(tuple(config.grid_shape) + values.shape[1:], fill, dtype=values.dtype)
    covered = tuple(slice(0, s) for s in blocks.shape[:3])
    out[covered] = blocks
    return out


def grid_image(data: np.ndarray, config: PreprocessConfig) -> nib.Nifti1Image:
    """Wrap a model-grid array as a NIfTI image in MNI space (sform and qform codes 4 = MNI)."""
    if tuple(data.shape[:3]) != tuple(config.grid_shape):
        raise ValueError(f"array of shape {data.shape} does not match the model grid {config.grid_shape}")
    img = nib.Nifti1Image(data, model_grid_affine(config))
    img.header.set_sform(img.affine, code=4)
    img.header.set_qform(img.affine, code=4)
    img.header.set_xyzt_units("mm")
    return img


def as_trace(
    trace: RoutingTrace | Mapping[int, LayerTrace], grid_size: Sequence[int] | None = None
) -> RoutingTrace:
    """Accept a :class:`RoutingTrace` or a ``{block index: LayerTrace}`` mapping; check the grid."""
    if not isinstance(trace, RoutingTrace):
        trace = RoutingTrace(dict(trace), None)
    size = tuple(grid_size) if grid_size is not None else trace.grid_size
    if size is None:
        raise ValueError(
            "the routing trace has no grid_size (token sequence model?); pass grid_size=(gR, gA, gS) "
            "for the patch grid of the image model"
        )
    return RoutingTrace(trace.layers, tuple(int(g) for g in size))


def resolve_layers(trace: RoutingTrace, layers: str | int | Sequence[int] = "all") -> list[int]:
    """Block indices selected by ``layers``: ``"all"``, ``"last"``, one index or a list of them."""
    return select_layers(trace.layer_indices, layers)


def select_layers(available: Sequence[int], layers: str | int | Sequence[int] = "all") -> list[int]:
    """:func:`resolve_layers` against the MoE block indices ``available`` (e.g. before any scan is run).

    Raises
    ------
    ValueError
        ``layers`` is malformed or names a block that is not among ``available``.
    """
    available = list(available)
    if not available:
        raise ValueError("the routing trace holds no MoE layer; run the model with capture_routing=True")
    if layers == "all":
        return available
    if layers == "last":
        return available[-1:]
    if isinstance(layers, str):
        try:
            wanted = [int(part) for part in layers.split(",")]
        except ValueError:
            raise ValueError(
                f"layers={layers!r} is not 'all', 'last' or comma-separated block indices like '1,3'"
            ) from None
    elif isinstance(layers, (int, np.integer)):
        wanted = [int(layers)]
    else:
        wanted = [int(i) for i in layers]
    missing = [i for i in wanted if i not in available]
    if missing:
        raise ValueError(f"layers {missing} are not MoE layers of the trace; available: {available}")
    return wanted
