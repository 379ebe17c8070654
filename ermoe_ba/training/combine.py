"""Combine separately trained checkpoints into one ensemble checkpoint.

Members of an ensemble need not train in one process: train each with ``ermoe-ba train`` (on
several cores, machines or GPUs at once, with its own ``--seed`` and ``--set`` options), then
average them with :func:`combine_checkpoints`. The result loads like any checkpoint (a
:class:`~ermoe_ba.models.ensemble.ModelEnsemble`). Members must share the grid they are
conformed to and the scans they were trained on, so that they share the target scaling the
ensemble applies once; architecture options may differ (e.g. the stem), and so may the model: a
hybrid ensemble mixes registered models, e.g. two ERMoE-ba stems and the linear ``voxel_ridge``
model of :func:`~ermoe_ba.training.voxel_ridge.train_voxel_ridge` (the checkpoint then records
each member's model name; the first member's is the ensemble's). A member's own age-bias
correction was fitted to that member's predictions, not the ensemble's, so the combined
checkpoint stores the correction it is given (e.g. from out-of-fold predictions of the ensemble,
:func:`~ermoe_ba.training.bias.bias_correction_from_table`) or none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ermoe_ba.training.bias import AgeBiasCorrection
from ermoe_ba.training.checkpoint import build_meta, load_checkpoint, save_checkpoint
from ermoe_ba.training.shift_average import named_offsets

__all__ = ["combine_checkpoints"]

_SAME = ("preprocess", "target", "training_data")


def combine_checkpoints(
    paths: Sequence[str | Path],
    output: str | Path,
    bias_correction: AgeBiasCorrection | None = None,
    shift_average: str = "none",
) -> Path:
    """Average the checkpoints ``paths`` into one ensemble checkpoint at ``output``.

    Parameters
    ----------
    paths
        Two or more single-model checkpoints trained on the same scans.
    output
        Where to write the ensemble (``.safetensors`` or ``.pt``), atomically.
    bias_correction
        The ensemble's age-bias correction; None stores the identity.
    shift_average
        The whole-voxel shifts its predictions are averaged over by default
        (:data:`~ermoe_ba.training.shift_average.OFFSET_SETS`); fit ``bias_correction`` on
        held-out predictions made the same way.

    Returns
    -------
    Path
        The checkpoint written.

    Raises
    ------
    ValueError
        Fewer than two members, a member that is already an ensemble, or a member whose grid,
        target scaling or training scans differ from the first's (the message names the file and
        the field).
    """
    from ermoe_ba.models import ModelEnsemble

    named_offsets(shift_average)  # an unknown name fails before any loading
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"combining needs at least two checkpoints, got {len(paths)}")
    loaded = [load_checkpoint(p) for p in paths]
    first_meta = loaded[0][1]
    for path, (_, meta) in zip(paths, loaded, strict=True):
        if int(meta.get("ensemble_size", 1)) > 1:
            raise ValueError(f"{path}: already an ensemble of {meta['ensemble_size']}; combine single models")
        for field in _SAME:
            if meta.get(field) != first_meta.get(field):
                raise ValueError(f"{path}: its {field} differs from {paths[0]}'s; members must share it")
    models = [model for model, _ in loaded]
    ensemble = ModelEnsemble(models)
    correction = bias_correction or AgeBiasCorrection()
    metas = [meta for _, meta in loaded]
    names = [m["model_name"] for m in metas]
    meta = build_meta(
        ensemble,
        first_meta["model_name"],
        model_overrides=first_meta.get("model_overrides", {}),
        preprocess=models[0].default_preprocess,
        target=first_meta["target"],
        bias_correction=correction.to_dict(),
        training_data=first_meta["training_data"],
        extra={
            "train_config": first_meta.get("train_config", {}),
            "train_seconds": round(sum(m.get("train_seconds", 0.0) for m in metas), 1),
            "ensemble_size": len(models),
            "member_seeds": [m.get("train_config", {}).get("seed") for m in metas],
            "member_overrides": [m.get("model_overrides", {}) for m in metas],
            "member_model_configs": [m["model_config"] for m in metas],
            **({"member_model_names": names} if len(set(names)) > 1 else {}),
            "combined_from": [_describe_file(p) for p in paths],
            **({"shift_average": shift_average} if shift_average != "none" else {}),
        },
    )
    return save_checkpoint(output, ensemble, meta)


def _describe_file(path: Path) -> dict[str, Any]:
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
