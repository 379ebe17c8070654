"""Save and load one subject's routing trace (``--save-routing``) as a NumPy ``.npz`` file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ermoe_ba.atomic import atomic_path
from ermoe_ba.data.conform import ConformResult
from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.routing.trace import LayerTrace, RoutingTrace

__all__ = ["check_routed_by", "load_routing", "save_routing"]


def save_routing(
    trace: RoutingTrace,
    index: int,
    path: str | Path,
    result: ConformResult | None,
    preprocess: PreprocessConfig,
    model_sha256: str | None = None,
) -> Path:
    """Write sample ``index`` of ``trace`` with the grid geometry and the native-space transform.

    Arrays per MoE layer ``L``: ``layer{L}_top_k_index (n, k)``, ``layer{L}_top_k_weight
    (n, k)``, ``layer{L}_scores (n, e)``; plus ``grid_size``, ``transform`` (4×4, template ->
    native world, NaN when unknown) and ``meta`` (JSON: preprocess config, layer indices, the
    sha256 of the checkpoint that routed, if known).
    """
    path = Path(path)
    arrays: dict[str, Any] = {}
    for layer in trace:
        key = f"layer{layer.layer_index}"
        arrays[f"{key}_top_k_index"] = layer.top_k_index[index].numpy().astype(np.int16)
        arrays[f"{key}_top_k_weight"] = layer.top_k_weight[index].float().numpy()
        arrays[f"{key}_scores"] = layer.scores[index].float().numpy()
    transform = None if result is None else result.transform
    arrays["transform"] = np.full((4, 4), np.nan) if transform is None else np.asarray(transform, dtype=np.float64)
    arrays["grid_size"] = np.asarray(trace.grid_size or (), dtype=np.int64)
    meta = {
        "preprocess": preprocess.to_dict(),
        "layers": trace.layer_indices,
        "source": None if result is None else str(result.path),
        "model_sha256": model_sha256,
    }
    arrays["meta"] = np.asarray(json.dumps(meta))
    return atomic_path(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def load_routing(path: str | Path) -> tuple[RoutingTrace, np.ndarray | None, dict[str, Any]]:
    """Inverse of :func:`save_routing`: a one-sample trace, the transform (or None) and the meta."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        layers = {}
        for index in meta["layers"]:
            key = f"layer{index}"
            layers[index] = LayerTrace(
                index,
                torch.from_numpy(data[f"{key}_top_k_index"].astype(np.int64))[None],
                torch.from_numpy(data[f"{key}_top_k_weight"])[None],
                torch.from_numpy(data[f"{key}_scores"])[None],
            )
        grid = tuple(int(g) for g in data["grid_size"]) or None
        transform = data["transform"]
    return RoutingTrace(layers, grid), (None if np.isnan(transform).any() else transform), meta


def check_routed_by(path: str | Path, model_sha256: str | None) -> None:
    """Raise ValueError unless the trace in ``path`` was saved by the checkpoint with this sha256."""
    with np.load(path, allow_pickle=False) as data:
        routed_by = json.loads(str(data["meta"])).get("model_sha256")
    if routed_by is None and model_sha256 is not None:
        raise ValueError(f"{path}: saved without the sha256 of its model (an older ermoe-ba); write to a new --out")
    if routed_by != model_sha256:
        raise ValueError(
            f"{path}: routed by another model (sha256 {str(routed_by)[:12]}, this run {str(model_sha256)[:12]}); "
            "continue with that run's --model or write to a new --out"
        )
