"""``BrainAgePredictor``: conform scans, run the model, return a predictions table.

The CLI (``ermoe-ba predict``) and notebooks use this class in exactly the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ermoe_ba.data.cache import default_cache_dir
from ermoe_ba.data.conform import Conformer, ConformResult, conform_records
from ermoe_ba.data.discovery import ScanRecord, discover, subject_id_from_path
from ermoe_ba.inference.pretrained import DEFAULT_MODEL, resolve_checkpoint, sha256_of
from ermoe_ba.inference.routing_io import save_routing
from ermoe_ba.inference.table import PREDICTION_COLUMNS
from ermoe_ba.layers import MoELayer
from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.training.bias import AgeBiasCorrection
from ermoe_ba.training.checkpoint import load_checkpoint
from ermoe_ba.training.distributed import resolve_device
from ermoe_ba.training.shift_average import checkpoint_shift_average, named_offsets, standardized_ages

__all__ = ["BrainAgePredictor"]


def _row(record: ScanRecord, result: ConformResult | None = None, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(PREDICTION_COLUMNS)
    row.update(subject_id=record.subject_id, path=str(record.path), age=record.age, error="")
    if result is not None:
        row.update(qc_score=result.qc_score, status=result.status, error=result.error)
    row.update(values)
    return row


class BrainAgePredictor:
    """Predict brain age from T1 scans with a trained ERMoE-ba (or any ermoe-ba) checkpoint.

    Parameters
    ----------
    model
        A model returning ``ModelOutput`` whose ``output[:, 0]`` is the standardised age.
    meta
        Checkpoint metadata: ``target`` (mean, std), ``bias_correction``, ``preprocess``.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    cache_dir
        Where conformed volumes are cached: None for the default cache (``$ERMOE_BA_CACHE`` or
        ``~/.cache/ermoe-ba/conformed``), ``False`` for no cache.
    shift_average
        Average each prediction over copies of the scan moved by whole voxels: a name from
        :data:`~ermoe_ba.training.shift_average.OFFSET_SETS` (``"none"``, ``"axes_1"``: 7 copies,
        ``"cube_1"``: 27, ...); None (default) takes the checkpoint's own setting, ``"none"`` if
        it has none. Costs one model pass per copy; conforming is not repeated.

    Examples
    --------
    >>> predictor = BrainAgePredictor.from_pretrained("default", device="cpu")  # doctest: +SKIP
    >>> table = predictor.predict_files(["scans/"])  # doctest: +SKIP
    >>> table[["subject_id", "predicted_age"]]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: str = "auto",
        cache_dir: str | Path | bool | None = None,
        shift_average: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.preprocess = PreprocessConfig.from_dict(meta["preprocess"])
        self.target_mean = float(meta["target"]["mean"])
        self.target_std = float(meta["target"]["std"])
        self.bias_correction = AgeBiasCorrection.from_dict(meta.get("bias_correction") or None)
        self.cache_dir = default_cache_dir() if cache_dir is None else (cache_dir or None)
        self.shift_average = checkpoint_shift_average(meta) if shift_average is None else shift_average
        self.offsets = named_offsets(self.shift_average)
        self.checkpoint_sha256: str | None = None  # set when loaded from a file: names the weights
        self.name = str(meta.get("model_name", "model"))  # from_pretrained: the name or path it was given

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_MODEL,
        device: str = "auto",
        cache_dir: str | Path | bool | None = None,
        shift_average: str | None = None,
    ) -> BrainAgePredictor:
        """Load a bundled model by name (``"default"``) or a checkpoint file."""
        path = resolve_checkpoint(name_or_path)
        model, meta = load_checkpoint(path, map_location="cpu")
        predictor = cls(model, meta, device=device, cache_dir=cache_dir, shift_average=shift_average)
        predictor.name = str(name_or_path)
        predictor.checkpoint_sha256 = sha256_of(path)
        return predictor

    @property
    def has_experts(self) -> bool:
        """Whether the model has a mixture-of-experts layer, i.e. routing to save or map."""
        return any(isinstance(module, MoELayer) for module in self.model.modules())

    def check_has_experts(self, purpose: str) -> None:
        """Raise ValueError naming the model and ``purpose`` when it has no mixture-of-experts layer."""
        if not self.has_experts:
            raise ValueError(
                f"model {self.name} has no mixture-of-experts layer, so there is no expert routing to {purpose}; "
                "give an ERMoE or softmax-MoE model (its router is 'dense' or it is a linear model)"
            )

    @torch.no_grad()
    def routed_layers(self) -> list[int]:
        """Block indices whose routing a prediction captures (one forward pass on a blank volume).

        The model runs once, not once per shift-averaging offset: only the routing is wanted.
        """
        blank = torch.zeros((1, 1, *self.preprocess.grid_shape), device=self.device)
        trace = self.model(blank, capture_routing=True).routing
        return [] if trace is None else trace.layer_indices

    @property
    def model_name(self) -> str:
        """Registered architecture of the loaded model."""
        return str(self.meta.get("model_name", "unknown"))

    @torch.no_grad()
    def _run(self, volumes: np.ndarray, capture_routing: bool):
        x = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[:, None].to(self.device)
        autocast = self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            standardized, routing = standardized_ages(self.model, x, self.offsets, capture_routing)
        ages = standardized.cpu().double().numpy() * self.target_std + self.target_mean
        return ages, (routing.to("cpu") if routing is not None else None)

    def predict_volume(self, image: np.ndarray | str | Path) -> float:
        """Predicted age (years) of one scan: a file, or a volume already in the model grid."""
        if isinstance(image, (str, Path)):
            result = Conformer(self.preprocess, self.cache_dir)(image)
            if result.status == "error":
                raise ValueError(result.error)
            image = result.volume
        volume = np.asarray(image, dtype=np.float32)
        if volume.shape != tuple(self.preprocess.grid_shape):
            raise ValueError(
                f"volume of shape {volume.shape} is not in the model grid "
                f"{tuple(self.preprocess.grid_shape)}; pass a file path to conform it first"
            )
        return float(self._run(volume[None], capture_routing=False)[0][0])

    def iter_batches(
        self,
        records: Sequence[ScanRecord],
        batch_size: int = 4,
        workers: int = 1,
        register: bool | None = None,
        routing_dir: str | Path | None = None,
        progress: bool = True,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield table rows batch by batch (so callers can write them out as they finish)."""
        config = self.preprocess
        if register is not None and register != config.register:
            config = PreprocessConfig.from_dict({**config.to_dict(), "register": register})
        results = conform_records(records, config, self.cache_dir, workers=workers, progress=progress)
        pending: list[tuple[ScanRecord, ConformResult]] = []
        for record, result in zip(records, results, strict=True):
            pending.append((record, result))
            if len(pending) == batch_size:
                yield self._predict_batch(pending, routing_dir)
                pending = []
        if pending:
            yield self._predict_batch(pending, routing_dir)

    def _predict_batch(
        self, batch: list[tuple[ScanRecord, ConformResult]], routing_dir: str | Path | None
    ) -> list[dict[str, Any]]:
        ok = [(rec, res) for rec, res in batch if res.status == "ok"]
        predicted: dict[str, float] = {}
        if ok:
            ages, trace = self._run(np.stack([res.volume for _, res in ok]), capture_routing=routing_dir is not None)
            for i, (rec, res) in enumerate(ok):
                predicted[rec.subject_id] = float(ages[i])
                if routing_dir is not None and trace is not None:
                    target = Path(routing_dir) / f"{rec.subject_id}.npz"
                    save_routing(trace, i, target, res, self.preprocess, self.checkpoint_sha256)
        rows = []
        for rec, res in batch:
            pred = predicted.get(rec.subject_id)
            values: dict[str, Any] = {}
            if pred is not None:
                values["predicted_age"] = pred
                if rec.age is not None:
                    corrected = float(self.bias_correction.apply(pred))
                    values.update(brain_age_gap=pred - rec.age, brain_age_gap_corrected=corrected - rec.age)
            rows.append(_row(rec, res, **values))
        return rows

    def predict_files(
        self,
        inputs: Sequence[str | Path] | str | Path | pd.DataFrame,
        ages: str | Path | None = None,
        batch_size: int = 4,
        workers: int = 1,
        register: bool | None = None,
        routing_dir: str | Path | None = None,
        progress: bool = True,
        on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> pd.DataFrame:
        """Predict every scan found in ``inputs`` (files, folders, DICOM series, BIDS, tables).

        Returns a DataFrame with the columns ``subject_id, path, predicted_age, age,
        brain_age_gap, brain_age_gap_corrected, qc_score, status, error``; one row per scan,
        failed scans included (``status`` ``error`` or ``qc_fail`` and a one-line reason).
        """
        records = self.discover(inputs, ages)
        rows: list[dict[str, Any]] = []
        for batch_rows in self.iter_batches(records, batch_size, workers, register, routing_dir, progress):
            rows.extend(batch_rows)
            if on_batch is not None:
                on_batch(batch_rows)
        return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))

    @staticmethod
    def discover(
        inputs: Sequence[str | Path] | str | Path | pd.DataFrame, ages: str | Path | None = None
    ) -> list[ScanRecord]:
        """Scan records for ``inputs``; a DataFrame needs a ``path`` column (and may have ``age``)."""
        if isinstance(inputs, pd.DataFrame):
            if "path" not in inputs.columns:
                raise ValueError("a table of scans needs a 'path' column")
            records = discover(list(inputs["path"]), ages)
            if "age" in inputs.columns:
                by_path = {str(Path(p)): a for p, a in zip(inputs["path"], inputs["age"], strict=True)}
                for rec in records:
                    age = by_path.get(str(rec.path))
                    if age is not None and not pd.isna(age):
                        rec.age = float(age)
            return records
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        existing = [p for p in inputs if Path(p).expanduser().exists()]
        # A missing input becomes a record that fails with a clear error row; the batch goes on.
        missing = [ScanRecord(subject_id_from_path(p), Path(p)) for p in inputs if p not in existing]
        return discover(existing, ages) + missing
