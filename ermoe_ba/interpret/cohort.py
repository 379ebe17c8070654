"""Cohort maps: per expert, the fraction of subjects whose voxel is routed to it (top-1).

Files written (into ``out_dir/cohort/``) for each MoE layer ``L``:

``layer<L>_expert_fraction_space-MNI.nii.gz``
    float32 4D ``(R, A, S, e)``; volume ``e`` holds, per voxel, the fraction of subjects (0..1)
    whose token there had expert ``e`` as top-1. Volumes sum to 1 wherever a token lies.
``layer<L>_modal_expert_space-MNI.nii.gz``
    int16 label map of the most frequent top-1 expert (``e + 1``; ties go to the lower id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import torch

from ermoe_ba.interpret._io import save_img
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
    "check_cohort",
    "cohort_fraction_img",
    "expert_fraction",
    "modal_expert_img",
    "split_trace",
    "stack_top1",
    "write_cohort_maps",
]


def split_trace(trace: RoutingTrace, subject_ids: Sequence[str]) -> dict[str, RoutingTrace]:
    """Split a batched trace ``(b, n, ...)`` into one single-sample trace per subject id."""
    ids = [str(s) for s in subject_ids]
    for layer in trace:
        if layer.top_k_index.shape[0] != len(ids):
            raise ValueError(f"trace has {layer.top_k_index.shape[0]} samples but {len(ids)} subject ids")
    if len(set(ids)) != len(ids):
        raise ValueError("subject ids are not unique")
    return {
        sid: RoutingTrace(
            {
                i: LayerTrace(i, t.top_k_index[b : b + 1], t.top_k_weight[b : b + 1], t.scores[b : b + 1])
                for i, t in trace.layers.items()
            },
            trace.grid_size,
        )
        for b, sid in enumerate(ids)
    }


def check_cohort(
    traces_per_subject: Mapping[str, RoutingTrace | Mapping[int, LayerTrace]],
    grid_size: Sequence[int] | None = None,
) -> dict[str, RoutingTrace]:
    """Normalise the traces and check that all subjects share token grid, layers and experts."""
    if not traces_per_subject:
        raise ValueError("no subjects: traces_per_subject is empty")
    traces = {str(sid): as_trace(t, grid_size) for sid, t in traces_per_subject.items()}
    first_id, first = next(iter(traces.items()))
    signature = (first.grid_size, {i: t.num_experts for i, t in first.layers.items()})
    for sid, trace in traces.items():
        if (trace.grid_size, {i: t.num_experts for i, t in trace.layers.items()}) != signature:
            raise ValueError(
                f"subject {sid!r} was traced with a different model than {first_id!r}: token grid and "
                f"{{layer: experts}} {trace.grid_size}, "
                f"{ {i: t.num_experts for i, t in trace.layers.items()} } vs {signature[0]}, {signature[1]}"
            )
        if not len(trace):
            raise ValueError(
                f"trace of subject {sid!r} holds no MoE layer; run the model with capture_routing=True"
            )
        batch = int(next(iter(trace)).top_k_index.shape[0])
        if batch != 1:
            raise ValueError(
                f"trace of subject {sid!r} holds {batch} samples; split batches with split_trace"
            )
    return traces


def stack_top1(traces: Mapping[str, RoutingTrace], layer_index: int) -> np.ndarray:
    """``(s, n)`` int64 top-1 expert ids of one layer, subjects in mapping order."""
    return torch.cat([t[layer_index].top1 for t in traces.values()]).cpu().numpy().astype(np.int64)


def expert_fraction(top1: np.ndarray, num_experts: int) -> np.ndarray:
    """``(s, n)`` top-1 ids -> ``(n, e)`` fraction of subjects routed to each expert.

    Examples
    --------
    >>> expert_fraction(np.array([[0, 1], [0, 0]]), 2).tolist()
    [[1.0, 0.0], [0.5, 0.5]]
    """
    top1 = np.asarray(top1)
    onehot = top1[..., None] == np.arange(num_experts)
    return onehot.mean(axis=0)


def cohort_fraction_img(
    traces: Mapping[str, RoutingTrace], config: PreprocessConfig, layer_index: int
) -> nib.Nifti1Image:
    """4D ``(R, A, S, e)`` float32 map of the fraction of subjects routed to each expert."""
    first = next(iter(traces.values()))
    frac = expert_fraction(stack_top1(traces, layer_index), first[layer_index].num_experts)
    return grid_image(tokens_to_grid(frac.astype(np.float32), first.grid_size, config, fill=0.0), config)


def modal_expert_img(
    traces: Mapping[str, RoutingTrace], config: PreprocessConfig, layer_index: int
) -> nib.Nifti1Image:
    """int16 label map of each voxel's most frequent top-1 expert (``e + 1``; 0 = no token)."""
    first = next(iter(traces.values()))
    frac = expert_fraction(stack_top1(traces, layer_index), first[layer_index].num_experts)
    labels = (frac.argmax(axis=1) + EXPERT_LABEL_OFFSET).astype(np.int16)
    img = grid_image(tokens_to_grid(labels, first.grid_size, config, fill=0), config)
    img.header.set_intent("label")
    return img


def write_cohort_maps(
    traces_per_subject: Mapping[str, RoutingTrace | Mapping[int, LayerTrace]],
    config: PreprocessConfig,
    out_dir: str | Path,
    *,
    layers: str | int | Sequence[int] = "all",
    grid_size: Sequence[int] | None = None,
) -> list[Path]:
    """Write the cohort fraction and modal-expert maps of every chosen layer.

    Parameters
    ----------
    traces_per_subject
        ``{subject id: single-sample RoutingTrace}`` (see :func:`split_trace`).
    config
        The checkpoint's PreprocessConfig (model grid).
    out_dir
        Run folder; files go to ``out_dir/cohort/``.
    layers
        ``"all"``, ``"last"``, a block index or a list of them.
    grid_size
        Token grid when the traces do not carry it.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    traces = check_cohort(traces_per_subject, grid_size)
    folder = Path(out_dir) / "cohort"
    written = []
    for index in resolve_layers(next(iter(traces.values())), layers):
        frac = cohort_fraction_img(traces, config, index)
        written.append(save_img(frac, folder / f"layer{index}_expert_fraction_space-MNI.nii.gz"))
        modal = modal_expert_img(traces, config, index)
        written.append(save_img(modal, folder / f"layer{index}_modal_expert_space-MNI.nii.gz"))
    return written
