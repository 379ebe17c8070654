"""The training cohort in memory: conformed volumes, ages and where they came from.

Conformed volumes come from the preprocessing cache (:class:`ermoe_ba.data.conform.Conformer`),
so a second run costs a file read per scan. The whole development set (129 x 80x96x80) is
~160 MB in float16, so it is held in memory and batches are sliced from one tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ermoe_ba.models.config import PreprocessConfig

__all__ = ["IXI_ATTRIBUTION", "VolumeSet", "data_licence", "load_cohort", "load_volumes"]

log = logging.getLogger(__name__)

IXI_ATTRIBUTION = (
    "Data from the IXI dataset (https://brain-development.org/ixi-dataset/), Imperial College London, "
    "EPSRC GR/S21533/02; licence CC BY-SA 3.0"
)


def data_licence(subject_ids: Sequence[str]) -> dict[str, str]:
    """Licence and attribution of training data, recognised from subject ids (IXI) or unknown."""
    if subject_ids and all(str(s).upper().startswith("IXI") for s in subject_ids):
        return {"licence": "CC BY-SA 3.0", "attribution": IXI_ATTRIBUTION}
    return {"licence": "unknown (state the licence of your training data)", "attribution": ""}


@dataclass
class VolumeSet:
    """Conformed volumes with ages, aligned by position.

    Attributes
    ----------
    volumes
        ``(n, 1, R, A, S)`` float16 tensor in the model grid of ``preprocess``.
    ages
        ``(n,)`` float64, NaN where the age is unknown.
    subject_ids, sessions, paths
        Per-scan identity and source file.
    skipped
        ``(path, reason)`` of scans that failed conforming or QC.
    """

    volumes: torch.Tensor
    ages: np.ndarray
    subject_ids: list[str]
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    sessions: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        n = self.volumes.shape[0]
        self.ages = np.asarray(self.ages, dtype=np.float64).reshape(-1)
        if self.volumes.ndim != 5 or self.volumes.shape[1] != 1:
            raise ValueError(f"volumes must be (n, 1, R, A, S), got {tuple(self.volumes.shape)}")
        if tuple(self.volumes.shape[2:]) != tuple(self.preprocess.grid_shape):
            raise ValueError(
                f"volumes have grid {tuple(self.volumes.shape[2:])} but the PreprocessConfig grid is "
                f"{self.preprocess.grid_shape}; conform them with that config"
            )
        if len(self.ages) != n or len(self.subject_ids) != n:
            raise ValueError(f"{n} volumes but {len(self.ages)} ages and {len(self.subject_ids)} subject ids")
        self.sessions = list(self.sessions) or [None] * n
        self.paths = list(self.paths) or [""] * n

    def __len__(self) -> int:
        return self.volumes.shape[0]

    def subset(self, index: Sequence[int] | np.ndarray) -> VolumeSet:
        """The scans at positions ``index`` (same order)."""
        idx = np.asarray(index, dtype=np.int64)
        return VolumeSet(
            self.volumes[torch.from_numpy(idx)],
            self.ages[idx],
            [self.subject_ids[i] for i in idx],
            self.preprocess,
            [self.sessions[i] for i in idx],
            [self.paths[i] for i in idx],
            [],
            self.source,
        )

    def with_age(self) -> VolumeSet:
        """Only the scans that have an age."""
        return self.subset(np.flatnonzero(np.isfinite(self.ages)))

    def describe(self) -> dict[str, Any]:
        """Description of the data for checkpoints: ids, count, age range, source, licence."""
        ages = self.ages[np.isfinite(self.ages)]
        return {
            "n_scans": len(self),
            "n_subjects": len(set(self.subject_ids)),
            "subject_ids": list(self.subject_ids),
            "age_range": [float(ages.min()), float(ages.max())] if ages.size else None,
            "age_mean": float(ages.mean()) if ages.size else None,
            "source": self.source,
            **data_licence(self.subject_ids),
        }


def load_volumes(
    records: Sequence[Any],
    preprocess: PreprocessConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    source: str = "",
    workers: int = 1,
) -> VolumeSet:
    """Conform (or read from the cache) every scan record and stack the volumes.

    Parameters
    ----------
    records
        :class:`ermoe_ba.data.discovery.ScanRecord` objects (``subject_id``, ``path``, ``age``,
        ``session``).
    preprocess
        The model grid; the default :class:`PreprocessConfig` when None.
    cache_dir
        Conforming cache; :func:`ermoe_ba.data.cache.default_cache_dir` when None.
    workers
        Parallel conforming processes for scans not in the cache yet (0: one per core, see
        :func:`ermoe_ba.data.conform.auto_workers`).

    Scans that fail conforming or QC are left out and listed in ``skipped`` with the reason.
    """
    from ermoe_ba.data.cache import default_cache_dir
    from ermoe_ba.data.conform import conform_records

    preprocess = preprocess or PreprocessConfig()
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    records = list(records)
    vols, ages, ids, sessions, paths, skipped = [], [], [], [], [], []
    results = conform_records(records, preprocess, cache, workers=workers, progress=progress)
    for rec, res in zip(records, results, strict=True):
        if res.status != "ok" or res.volume is None:
            skipped.append((str(rec.path), f"{res.status}: {res.error}"))
            log.warning("skipping %s (%s: %s)", rec.path, res.status, res.error)
            continue
        vols.append(torch.from_numpy(np.asarray(res.volume, dtype=np.float16)))
        ages.append(np.nan if rec.age is None else float(rec.age))
        ids.append(str(rec.subject_id))
        sessions.append(getattr(rec, "session", None))
        paths.append(str(rec.path))
    if not vols:
        raise ValueError(f"none of the {len(records)} scans could be conformed; first problems: {skipped[:3]}")
    volumes = torch.stack(vols).unsqueeze(1)
    return VolumeSet(volumes, np.asarray(ages), ids, preprocess, sessions, paths, skipped, source)


def load_cohort(
    inputs: str | Path | Sequence[str | Path],
    ages: str | Path | None = None,
    preprocess: PreprocessConfig | None = None,
    cache_dir: str | Path | None = None,
    require_age: bool = True,
    progress: bool = True,
    workers: int = 1,
) -> VolumeSet:
    """Discover scans (files, folders, BIDS datasets or tables of paths) and load them with ages.

    Parameters
    ----------
    inputs
        One or more inputs that :func:`ermoe_ba.data.discovery.discover` accepts.
    ages
        Optional table with ``subject_id`` and ``age`` columns that overrides or adds ages.
    require_age
        Keep only scans with a known age (training); raise if none has one.
    """
    from ermoe_ba.data.discovery import discover

    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    records = discover(items, ages=ages)
    if require_age:
        known = [r for r in records if r.age is not None and np.isfinite(r.age)]
        if not known:
            raise ValueError(
                f"no scan under {', '.join(map(str, items))} has an age; give a table with subject_id and "
                "age columns (--ages) or a BIDS participants.tsv with an age column"
            )
        if len(known) < len(records):
            log.info("%d of %d scans have no age and are not used", len(records) - len(known), len(records))
        records = known
    source = ", ".join(map(str, items))
    return load_volumes(records, preprocess, cache_dir, progress=progress, source=source, workers=workers)
