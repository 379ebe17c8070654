"""MONAI transforms that conform a raw T1 scan: ``ConformT1`` (array form) and ``ConformT1d`` (dict form).

Both wrap :class:`~ermoe_ba.data.conform.Conformer`, so a MONAI ``Dataset`` / ``CacheDataset``
pipeline and the ``ermoe-ba preprocess`` command produce identical volumes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ermoe_ba.data.conform import Conformer, ConformResult
from ermoe_ba.data.discovery import ScanRecord
from ermoe_ba.models.config import PreprocessConfig, check_choice

__all__ = ["ConformError", "ConformT1", "ConformT1d"]


class ConformError(RuntimeError):
    """Raised by the transforms when a scan cannot be conformed (``on_error="raise"``)."""


def _to_meta_tensor(result: ConformResult) -> MetaTensor:
    meta = {
        "subject_id": result.subject_id,
        "filename_or_obj": str(result.path),
        "qc_score": np.nan if result.qc_score is None else float(result.qc_score),
        "qc_status": result.status,
        "native_transform": torch.as_tensor(result.transform, dtype=torch.float64),
        "space": "RAS",
    }
    data = torch.from_numpy(np.asarray(result.volume, dtype=np.float32))[None]  # (1, R, A, S)
    return MetaTensor(data, affine=torch.as_tensor(result.affine, dtype=torch.float64), meta=meta)


class ConformT1(Transform):
    """Conform a scan path (or :class:`ScanRecord`) to a channel-first MetaTensor on the model grid.

    Parameters
    ----------
    config
        The model's ``PreprocessConfig`` (grid, registration, N4, normalisation).
    cache_dir
        Conformed-volume cache (see :mod:`ermoe_ba.data.cache`), or ``None``.
    on_error
        ``"raise"`` raises :class:`ConformError` for ``status="error"``; ``"zeros"`` returns a
        zero volume whose ``meta["qc_status"]`` is ``"error"``. Scans that fail QC are returned
        with ``meta["qc_status"] == "qc_fail"``; filter on it.

    Examples
    --------
    >>> img = ConformT1(PreprocessConfig())("sub-01_T1w.nii.gz")  # doctest: +SKIP
    >>> img.shape, img.meta["qc_status"]  # doctest: +SKIP
    (torch.Size([1, 80, 96, 80]), 'ok')
    """

    def __init__(
        self,
        config: PreprocessConfig | None = None,
        cache_dir: str | Path | None = None,
        on_error: str = "raise",
    ) -> None:
        self.conformer = Conformer(config, cache_dir)
        self.on_error = check_choice("on_error", on_error, ("raise", "zeros"))

    def __call__(self, path: str | Path | ScanRecord) -> MetaTensor:
        result = self.conformer(path)
        if result.status == "error":
            if self.on_error == "raise":
                raise ConformError(result.error)
            result.volume = np.zeros(self.conformer.config.grid_shape, dtype=np.float32)
            result.transform = np.full((4, 4), np.nan)
        return _to_meta_tensor(result)


class ConformT1d(MapTransform):
    """Dictionary form of :class:`ConformT1`: replaces each key's path with the conformed MetaTensor.

    Examples
    --------
    >>> out = ConformT1d("image")({"image": "sub-01_T1w.nii.gz", "age": 34.0})  # doctest: +SKIP
    >>> out["image"].meta["qc_score"]  # doctest: +SKIP
    0.52
    """

    def __init__(
        self,
        keys: KeysCollection,
        config: PreprocessConfig | None = None,
        cache_dir: str | Path | None = None,
        on_error: str = "raise",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.conform = ConformT1(config, cache_dir, on_error)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.conform(out[key])
        return out
