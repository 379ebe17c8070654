"""Brain-age methods compared by cross-validation, behind one small interface.

A method trains on one fold's training scans and returns predictions for a *calibration* set
(scans of the training part, used to fit the age-bias correction) and for the test scans. It
never sees the test ages. Deep methods calibrate on their validation split (held out from the
gradient steps); the classical baseline on inner-CV predictions of its training scans.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ermoe_ba.training.classical import PcaRidgeBrainAge
from ermoe_ba.training.config import TrainConfig, member_configs, member_model_overrides
from ermoe_ba.training.data import VolumeSet
from ermoe_ba.training.loop import fit, predict
from ermoe_ba.training.splits import FoldSplit

__all__ = [
    "ClassicalMethod",
    "DeepMethod",
    "FoldPrediction",
    "Method",
    "count_parameters",
    "method_from_dict",
]


@dataclass
class FoldPrediction:
    """What a method returns for one fold (cohort positions index the predictions).

    ``predictor`` maps ``(b, 1, R, A, S)`` volumes to predicted ages with the fold's fitted
    model (ensemble members averaged), for the sensitivity measures of
    :mod:`ermoe_ba.training.sensitivity`.
    """

    calibration_index: np.ndarray
    calibration_pred: np.ndarray
    test_pred: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    predictor: Callable[[torch.Tensor], np.ndarray] | None = None


class Method(Protocol):
    """Anything with a ``name`` and ``fit_predict(data, split, state_dir) -> FoldPrediction``.

    ``state_dir`` is a folder the method may keep its training state in, to continue a killed
    fold from it (None: keep none).
    """

    name: str

    def fit_predict(self, data: VolumeSet, split: FoldSplit, state_dir: Path | None = None) -> FoldPrediction: ...

    def describe(self) -> dict[str, Any]: ...


def settings_defaults(method: Method) -> dict[str, Any]:
    """What a setting missing from an older results file stood for (deep methods: the default recipe).

    An option added to :class:`TrainConfig` defaults to the behaviour that came before it, so a
    fold written before the option existed was made with that default.
    """
    return {"train": TrainConfig().to_dict()} if isinstance(method, DeepMethod) else {}


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total parameters and parameters one token touches (router, bases and ``top_k`` experts)."""
    from ermoe_ba.layers import active_parameter_count

    return {"total": sum(p.numel() for p in model.parameters()), "active": active_parameter_count(model)}


@dataclass
class DeepMethod:
    """A registered network trained with :func:`ermoe_ba.training.loop.fit`.

    ``seeds > 1`` trains that many models per fold (weights, batch order and augmentation
    seeded apart) and averages their predictions: a seed ensemble, which damps the variance of
    training on ~100 scans. ``member_overrides`` (one dict per member, over ``model_overrides``)
    makes the members differ in architecture too, e.g. two stems. Fold results then report each
    member's training and load metrics.
    """

    name: str
    model_name: str
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: int = 1
    member_overrides: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.variants  # noqa: B018  (validate seeds and member_overrides now, not mid-run)

    @property
    def variants(self) -> list[dict[str, Any]]:
        """The model overrides of each member (one entry per trained model)."""
        try:
            return member_model_overrides(self.model_overrides, self.member_overrides, self.seeds)
        except ValueError as err:
            raise ValueError(f"{err} (method {self.name!r})") from None

    def build(self, data: VolumeSet, seed: int, overrides: dict[str, Any] | None = None) -> torch.nn.Module:
        """A freshly initialised model for ``data``'s grid (weights seeded by ``seed``).

        ``overrides`` replace the method's ``model_overrides`` (one ensemble member's).
        """
        import ermoe_ba.models.sfcn  # noqa: F401  (registers the CNN peer)
        from ermoe_ba.models import create_model

        torch.manual_seed(seed)
        chosen = self.model_overrides if overrides is None else overrides
        return create_model(self.model_name, preprocess=data.preprocess, **chosen)

    def fit_predict(self, data: VolumeSet, split: FoldSplit, state_dir: Path | None = None) -> FoldPrediction:
        """Train on ``split.train`` (early stopping on ``split.val``), predict val and test.

        With ``state_dir``, member ``j`` keeps its training state in ``member<j>.pt`` there and
        continues from it (:func:`~ermoe_ba.training.loop.fit`).
        """
        fold_recipe = dataclasses.replace(self.train, seed=self.train.seed + split.fold)
        variants = self.variants
        recipes = member_configs(fold_recipe, len(variants))
        members = [
            self._fit_member(data, split, cfg, variant, None if state_dir is None else state_dir / f"member{j}.pt")
            for j, (cfg, variant) in enumerate(zip(recipes, variants, strict=True))
        ]
        val_pred = np.mean([m["val_pred"] for m in members], axis=0)
        test_pred = np.mean([m["test_pred"] for m in members], axis=0)
        first = members[0]["info"]
        info = {**first, "train_seconds": sum(m["info"]["train_seconds"] for m in members)}
        info["inference_seconds_per_scan"] = sum(m["info"]["inference_seconds_per_scan"] for m in members)
        info["load"] = _mean_load([m["info"]["load"] for m in members])
        if len(members) > 1:
            info["members"] = [
                {**{k: v for k, v in m["info"].items() if k != "history"}, "test_pred": m["test_pred"].tolist()}
                for m in members
            ]

        def predictor(volumes: torch.Tensor) -> np.ndarray:
            return np.mean([m["predict"](volumes) for m in members], axis=0)

        return FoldPrediction(split.val, val_pred, test_pred, info, predictor)

    def _fit_member(
        self, data: VolumeSet, split: FoldSplit, cfg: TrainConfig, overrides: dict[str, Any], state: Path | None
    ) -> dict[str, Any]:
        from ermoe_ba.routing.metrics import load_metrics

        model = self.build(data, cfg.seed, overrides)
        vol, ages = data.volumes, data.ages
        result = fit(model, vol[split.train], ages[split.train], vol[split.val], ages[split.val], cfg, state)
        device = next(model.parameters()).device
        val_pred, _ = predict(model, vol[split.val], result.scaler, cfg.eval_batch_size, device)
        start = time.perf_counter()
        test_pred, trace = predict(
            model, vol[split.test], result.scaler, cfg.eval_batch_size, device, capture_routing=True
        )
        infer_s = (time.perf_counter() - start) / max(1, len(split.test))
        load = {}
        if trace is not None:
            load = {str(i): load_metrics(layer.top_k_index, layer.num_experts) for i, layer in trace.layers.items()}
        info = {
            "seed": cfg.seed,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "best_val_mae": result.best_val_mae,
            "train_seconds": result.seconds,
            "inference_seconds_per_scan": infer_s,
            "parameters": count_parameters(model),
            "target": result.scaler.to_dict(),
            "history": result.history,
            "load": load,
        }

        def member_predict(volumes: torch.Tensor) -> np.ndarray:
            return predict(model, volumes, result.scaler, cfg.eval_batch_size, device)[0]

        return {"val_pred": val_pred, "test_pred": test_pred, "info": info, "predict": member_predict}

    def describe(self) -> dict[str, Any]:
        """Settings for the results file."""
        return {
            "kind": "deep",
            "model_name": self.model_name,
            "model_overrides": self.model_overrides,
            "train": self.train.to_dict(),
            **({"seeds": self.seeds} if self.seeds > 1 else {}),
            **({"member_overrides": self.member_overrides} if self.member_overrides is not None else {}),
        }


@dataclass
class ClassicalMethod:
    """PCA + ridge on ~6 mm voxels (:class:`~ermoe_ba.training.classical.PcaRidgeBrainAge`).

    It has no use for early stopping, so it fits on training and validation scans together and
    tunes its penalty by inner CV on them; calibration uses inner-CV predictions of those scans.
    """

    name: str = "pca_ridge"
    factor: int = 3
    n_components: int | float = 0.95
    inner_folds: int = 5
    seed: int = 0

    def fit_predict(self, data: VolumeSet, split: FoldSplit, state_dir: Path | None = None) -> FoldPrediction:
        """Fit on train+val, predict test; calibration = inner-CV predictions of train+val (seconds: no state)."""
        start = time.perf_counter()
        fit_idx = np.sort(np.concatenate([split.train, split.val]))
        model = PcaRidgeBrainAge(self.factor, self.n_components, inner_folds=self.inner_folds, seed=self.seed)
        model.fit(data.volumes[fit_idx], data.ages[fit_idx])
        calib = model.out_of_fold(data.volumes[fit_idx], data.ages[fit_idx])
        test_pred = model.predict(data.volumes[split.test])
        info = {"best_alpha": model.best_alpha, "train_seconds": time.perf_counter() - start, "load": {}}
        return FoldPrediction(fit_idx, calib, test_pred, info, model.predict)

    def describe(self) -> dict[str, Any]:
        """Settings for the results file."""
        return {
            "kind": "classical",
            "factor": self.factor,
            "n_components": self.n_components,
            "inner_folds": self.inner_folds,
        }


def _mean_load(loads: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per layer, the mean over ensemble members of each load metric (element-wise for lists)."""
    if len(loads) == 1:
        return loads[0]
    return {
        layer: {key: np.mean([load[layer][key] for load in loads], axis=0).tolist() for key in loads[0][layer]}
        for layer in loads[0]
    }


def method_from_dict(spec: dict[str, Any], train: TrainConfig | None = None) -> Method:
    """Build a method from a pipeline config entry.

    ``{"name": ..., "kind": "deep", "model_name": ..., "model_overrides": {...}, "train": {...}}``
    (``train`` entries override the shared recipe) or ``{"name": ..., "kind": "classical", ...}``.
    """
    spec = dict(spec)
    kind = spec.pop("kind", "deep")
    if kind == "classical":
        return ClassicalMethod(**spec)
    if kind != "deep":
        raise ValueError(f"method kind {kind!r} is not 'deep' or 'classical' (in method {spec.get('name')!r})")
    base = (train or TrainConfig()).to_dict()
    own = dict(spec.pop("train", None) or {})  # a copy: the caller's config is read again for the report
    augment = {**base.pop("augment"), **own.pop("augment", {})}
    return DeepMethod(train=TrainConfig.from_dict({**base, **own, "augment": augment}), **spec)
