"""Self-describing checkpoints: plain tensors plus JSON metadata, never pickled code.

``.safetensors`` (default) stores the state dict with the metadata as one JSON string in the
header; any other suffix (``.pt``) is a ``torch.save`` of ``{"meta_json": str, "state_dict":
{name: tensor}}`` that loads with ``torch.load(weights_only=True)``. The metadata holds what
is needed to rebuild and use the model without the training code: model name and
:class:`~ermoe_ba.models.config.ModelConfig`, extra constructor options, the
:class:`~ermoe_ba.models.config.PreprocessConfig`, target statistics, the age-bias correction,
a description of the training data (ids, count, licence) and the package version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ermoe_ba.atomic import atomic_path
from ermoe_ba.errors import exception_summary
from ermoe_ba.models.config import ModelConfig, PreprocessConfig
from ermoe_ba.models.ensemble import ModelEnsemble

__all__ = ["CHECKPOINT_FORMAT", "build_meta", "load_checkpoint", "read_meta", "save_checkpoint"]

CHECKPOINT_FORMAT = "ermoe-ba-checkpoint/1"
_META_KEY = "ermoe_ba"


def build_meta(
    model: nn.Module,
    model_name: str,
    *,
    model_overrides: dict[str, Any] | None = None,
    preprocess: PreprocessConfig | None = None,
    target: dict[str, float] | None = None,
    bias_correction: dict[str, Any] | None = None,
    training_data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Collect the checkpoint metadata of ``model`` (a registered model with ``.config``)."""
    from ermoe_ba import __version__

    if preprocess is None:
        preprocess = getattr(model, "default_preprocess", None) or PreprocessConfig()
    return {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "model_config": model.config.to_dict(),
        "model_overrides": dict(model_overrides or {}),
        "preprocess": preprocess.to_dict(),
        "target": dict(target or {"mean": 0.0, "std": 1.0}),
        "bias_correction": dict(bias_correction or {}),
        "training_data": dict(training_data or {}),
        "package_version": __version__,
        "torch_version": torch.__version__,
        **(extra or {}),
    }


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model``'s state dict and ``meta`` (see :func:`build_meta`) atomically.

    Returns the path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta_json = json.dumps(meta, sort_keys=True)

    def write(tmp: Path) -> None:
        if path.suffix == ".safetensors":
            save_file(state, str(tmp), metadata={_META_KEY: meta_json})
        else:
            torch.save({"meta_json": meta_json, "state_dict": state}, tmp)

    return atomic_path(path, write)


def _read(path: Path, map_location: str | torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device=str(map_location)) as f:
                header = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
            meta_json = header.get(_META_KEY)
        else:
            payload = torch.load(path, map_location=map_location, weights_only=True)
            if not isinstance(payload, dict) or "state_dict" not in payload:
                raise ValueError("no state_dict/meta_json entries")
            state, meta_json = payload["state_dict"], payload.get("meta_json")
        meta = json.loads(meta_json) if meta_json else None
    except Exception as err:  # safetensors, pickle and json readers raise many types for a foreign file
        raise ValueError(f"{path} is not a readable ermoe-ba checkpoint ({exception_summary(err)})") from None
    if meta is None:
        raise ValueError(f"{path} has no ermoe-ba metadata; it was not written by save_checkpoint")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has format {meta.get('format')!r}; this version reads {CHECKPOINT_FORMAT!r}")
    return state, meta


def read_meta(path: str | Path) -> dict[str, Any]:
    """Only the metadata of a checkpoint."""
    return _read(Path(path), "cpu")[1]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint and load its weights.

    A checkpoint with ``ensemble_size`` > 1 in its metadata holds a
    :class:`~ermoe_ba.models.ensemble.ModelEnsemble` and is rebuilt as one, each member from
    ``member_model_configs`` when the members differ (else all from ``model_config``) and as the
    registered model ``member_model_names`` names when those differ (else ``model_name``).

    Returns
    -------
    model, meta
        The model in eval mode on ``map_location`` and the metadata dict (``target``,
        ``bias_correction``, ``preprocess``, ``training_data``, ...).

    Examples
    --------
    >>> model, meta = load_checkpoint("model.safetensors")  # doctest: +SKIP
    >>> meta["target"]["mean"]  # doctest: +SKIP
    """
    import ermoe_ba.models.sfcn  # noqa: F401  (registers the CNN peer)
    from ermoe_ba.models import create_model

    path = Path(path)
    state, meta = _read(path, map_location)
    preprocess = PreprocessConfig.from_dict(meta["preprocess"])
    size = int(meta.get("ensemble_size", 1))
    configs = meta.get("member_model_configs") or [meta["model_config"]] * size
    names = meta.get("member_model_names") or [meta["model_name"]] * size
    # members of different models (a hybrid ensemble) carry their own overrides only
    overrides = {} if "member_model_names" in meta else meta.get("model_overrides", {})
    members = []
    for name, config in zip(names, configs, strict=True):
        kwargs = {**overrides, **ModelConfig.from_dict(config).to_dict(), "preprocess": preprocess}
        members.append(create_model(name, **kwargs))
    model = members[0] if size == 1 else ModelEnsemble(members)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit model {meta['model_name']!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.default_preprocess = preprocess
    return model.to(map_location).eval(), meta
