"""Per-subject expert maps: which expert each voxel's token went to, in MNI and native space.

Files written per subject and MoE layer ``L`` (into ``out_dir/<subject_id>/``):

``layer<L>_top1_expert_space-MNI.nii.gz``
    int16 label map, expert ``e`` stored as ``e + 1`` (0 = voxel covered by no token).
``layer<L>_top1_weight_space-MNI.nii.gz``
    float32 gate weight of the top-1 expert.
``layer<L>_expert_weights_space-MNI.nii.gz``
    float32 4D ``(R, A, S, e)``: gate weight each expert received (0 where not selected; sums
    to 1 over experts where gates are normalised over the selected experts).
``..._space-native.nii.gz``
    The same three maps resampled (nearest neighbour) onto the scan's own grid when the
    registration transform and the native image are given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from ermoe_ba.interpret._io import save_img
from ermoe_ba.interpret.native import NativeGrid, check_transform, native_grid, to_native
from ermoe_ba.interpret.tokens import (
    EXPERT_LABEL_OFFSET,
    as_trace,
    grid_image,
    resolve_layers,
    tokens_to_grid,
)
from ermoe_ba.routing.trace import LayerTrace, RoutingTrace

if TYPE_CHECKING:
    from ermoe_ba.models.config import PreprocessConfig

__all__ = [
    "check_subject_id",
    "expert_label_img",
    "expert_weights_img",
    "layer_arrays",
    "top1_weight_img",
    "write_subject_maps",
]


def check_subject_id(subject_id: str) -> str:
    """Return ``subject_id`` if it is usable as a folder name, else raise a ValueError."""
    sid = str(subject_id)
    if not sid or sid in (".", "..") or "/" in sid or "\\" in sid or sid == "cohort":
        raise ValueError(
            f"subject id {sid!r} cannot name an output folder (empty, '.', '..', 'cohort' or has a slash); "
            "rename the subject"
        )
    return sid


def layer_arrays(layer: LayerTrace, sample: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(n, k)`` int64 expert ids and float32 gate weights of one sample of a layer trace."""
    batch = int(layer.top_k_index.shape[0])
    if not 0 <= sample < batch:
        raise IndexError(f"sample {sample} is out of range for a trace of {batch} samples")
    index = layer.top_k_index[sample].detach().cpu().numpy().astype(np.int64)
    weight = layer.top_k_weight[sample].detach().cpu().float().numpy()
    return index, weight


def expert_label_img(
    layer: LayerTrace, grid_size: Sequence[int], config: PreprocessConfig, sample: int = 0
) -> nib.Nifti1Image:
    """Top-1 expert of every voxel's token as an int16 label map (expert ``e`` -> ``e + 1``)."""
    index, _ = layer_arrays(layer, sample)
    labels = (index[:, 0] + EXPERT_LABEL_OFFSET).astype(np.int16)
    img = grid_image(tokens_to_grid(labels, grid_size, config, fill=0), config)
    img.header.set_intent("label")
    return img


def top1_weight_img(
    layer: LayerTrace, grid_size: Sequence[int], config: PreprocessConfig, sample: int = 0
) -> nib.Nifti1Image:
    """Gate weight of every voxel's top-1 expert as a float32 map."""
    _, weight = layer_arrays(layer, sample)
    return grid_image(tokens_to_grid(weight[:, 0], grid_size, config, fill=0.0), config)


def expert_weights_img(
    layer: LayerTrace, grid_size: Sequence[int], config: PreprocessConfig, sample: int = 0
) -> nib.Nifti1Image:
    """4D ``(R, A, S, e)`` float32 map of the gate weight each expert received at every voxel."""
    index, weight = layer_arrays(layer, sample)
    per_expert = np.zeros((index.shape[0], layer.num_experts), dtype=np.float32)
    np.add.at(per_expert, (np.arange(index.shape[0])[:, None], index), weight)
    return grid_image(tokens_to_grid(per_expert, grid_size, config, fill=0.0), config)


def write_subject_maps(
    subject_id: str,
    layer_traces: RoutingTrace | Mapping[int, LayerTrace],
    config: PreprocessConfig,
    out_dir: str | Path,
    transform: np.ndarray | Any = None,
    native_img: nib.Nifti1Image | str | Path | NativeGrid | None = None,
    *,
    layers: str | int | Sequence[int] = "all",
    grid_size: Sequence[int] | None = None,
    sample: int = 0,
) -> list[Path]:
    """Write one subject's expert maps for the chosen MoE layers.

    Parameters
    ----------
    subject_id
        Names the sub-folder ``out_dir/<subject_id>/``.
    layer_traces
        The subject's :class:`RoutingTrace` (or ``{block index: LayerTrace}`` plus ``grid_size``).
    config
        The checkpoint's PreprocessConfig (model grid).
    out_dir
        Run folder.
    transform, native_img
        Registration transform (template world -> native world, 4x4, or a ConformResult) and
        the scan (image, path to NIfTI/MGZ/DICOM folder, or ``(shape, affine)``); give both to
        also write native-space maps.
    layers
        ``"all"``, ``"last"``, a block index or a list of them.
    grid_size
        Token grid when the trace does not carry it.
    sample
        Which sample of a batched trace is this subject.

    Returns
    -------
    list of pathlib.Path
        The files written, MNI-space maps first.

    Examples
    --------
    >>> paths = write_subject_maps("sub-01", trace, cfg, "out")  # doctest: +SKIP
    """
    sid = check_subject_id(subject_id)
    if (transform is None) != (native_img is None):
        raise ValueError(f"{sid}: give both transform and native_img for native-space maps, or neither")
    trace = as_trace(layer_traces, grid_size)
    folder = Path(out_dir) / sid
    if native_img is not None:
        # check both before writing anything, so a bad scan path leaves no half-written subject
        transform = check_transform(getattr(transform, "transform", transform))
        native_img = native_grid(native_img)  # read a path (or DICOM folder) once, not once per map
    written: list[Path] = []
    for index in resolve_layers(trace, layers):
        layer = trace[index]
        maps = {
            "top1_expert": expert_label_img(layer, trace.grid_size, config, sample),
            "top1_weight": top1_weight_img(layer, trace.grid_size, config, sample),
            "expert_weights": expert_weights_img(layer, trace.grid_size, config, sample),
        }
        for kind, img in maps.items():
            written.append(save_img(img, folder / f"layer{index}_{kind}_space-MNI.nii.gz"))
        if transform is not None:
            for kind, img in maps.items():
                native = to_native(img, transform, native_img)
                if kind == "top1_expert":
                    native.header.set_intent("label")
                written.append(save_img(native, folder / f"layer{index}_{kind}_space-native.nii.gz"))
    return written
