"""Conform a raw T1 scan to the model grid: load, N4, register to MNI152, resample, mask, normalise, QC.

:class:`Conformer` is the one code path; the MONAI transforms in :mod:`ermoe_ba.data.transforms`
and the ``ermoe-ba preprocess`` command wrap it. Bad input never raises: it becomes a
:class:`ConformResult` with ``status="error"`` and a one-line ``"<file>: <problem>"`` message.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ermoe_ba.data.cache import cache_key, file_digest, load_entry, save_entry
from ermoe_ba.data.discovery import ScanRecord, subject_id_from_path
from ermoe_ba.errors import exception_summary
from ermoe_ba.models.config import PreprocessConfig

__all__ = ["STATUSES", "ConformResult", "Conformer", "auto_workers", "conform_records"]

STATUSES = ("ok", "qc_fail", "error")


@dataclass
class ConformResult:
    """One conformed scan (or the reason it could not be conformed).

    Attributes
    ----------
    volume
        float32 array of shape ``config.grid_shape`` on the RAS model grid, ``None`` on error.
    affine
        The model grid's 4x4 voxel-to-world affine (``config.grid_affine()``).
    qc_score
        Correlation with the template inside the brain mask (see :mod:`ermoe_ba.data.qc`).
    transform
        4x4 matrix mapping template / model-grid world RAS mm to the scan's own world RAS mm.
    qc_reasons
        Why the scan failed QC (empty unless ``status == "qc_fail"``).
    registration
        ``metric`` (final Mattes MI), ``scale`` (similarity stage) and ``attempts``; empty when
        registration was off or failed.
    not_finite_voxels
        NaN or infinite voxels of the scan as stored, read as background; kept in the cache so
        that a cached result warns as the first reading did.
    """

    subject_id: str
    path: Path
    status: str
    error: str = ""
    volume: np.ndarray | None = None
    affine: np.ndarray | None = None
    qc_score: float | None = None
    transform: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    qc_reasons: list[str] = field(default_factory=list)
    registration: dict[str, float] = field(default_factory=dict)
    not_finite_voxels: int = 0


class Conformer:
    """Conform scans to ``config``'s model grid, with an optional on-disk cache.

    Parameters
    ----------
    config
        The model's :class:`~ermoe_ba.models.config.PreprocessConfig`.
    cache_dir
        Folder for cached results (see :mod:`ermoe_ba.data.cache`); ``None`` disables caching.

    Examples
    --------
    >>> result = Conformer(PreprocessConfig())("sub-01_T1w.nii.gz")  # doctest: +SKIP
    >>> result.status, result.volume.shape  # doctest: +SKIP
    ('ok', (80, 96, 80))
    """

    def __init__(self, config: PreprocessConfig | None = None, cache_dir: str | Path | None = None) -> None:
        from ermoe_ba.data.pipeline import registration_settings

        self.config = config or PreprocessConfig()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        registration_settings(self.config)  # a bad override is a usage error, raised here, not per scan

    def __call__(self, item: str | Path | ScanRecord) -> ConformResult:
        """Conform one scan; never raises for bad input."""
        if isinstance(item, ScanRecord):
            subject_id, path = item.subject_id, Path(item.path)
        else:
            path = Path(item)
            subject_id = subject_id_from_path(path)
        key = None
        if self.cache_dir is not None and path.exists():
            try:
                key = cache_key(file_digest(path), self.config)
            except OSError:
                key = None
            entry = load_entry(self.cache_dir, key) if key else None
            if entry is not None:
                return self._from_cache(subject_id, path, *entry)
        result = self._conform(subject_id, path)
        if key is not None and result.status != "error":
            save_entry(self.cache_dir, key, result.volume, self._meta(result))
        return result

    def _conform(self, subject_id: str, path: Path) -> ConformResult:
        from ermoe_ba.data.io import ScanError
        from ermoe_ba.data.pipeline import run_pipeline

        try:
            out = run_pipeline(path, self.config)
        except ScanError as err:
            return ConformResult(subject_id, path, "error", error=str(err), affine=self._grid_affine())
        except Exception as err:  # a failure inside ITK on odd input must not stop the batch
            message = f"{path}: conform failed ({exception_summary(err, limit=200)})"
            return ConformResult(subject_id, path, "error", error=message, affine=self._grid_affine())
        registration = {k: out[k] for k in ("metric", "scale", "attempts") if out[k] is not None}
        status = "qc_fail" if out["qc_reasons"] else "ok"
        error = f"{path}: failed QC ({'; '.join(out['qc_reasons'])})" if out["qc_reasons"] else ""
        return ConformResult(
            subject_id,
            path,
            status,
            error=error,
            volume=out["volume"],
            affine=self._grid_affine(),
            qc_score=out["qc_score"],
            transform=out["transform"],
            timings=out["timings"],
            qc_reasons=out["qc_reasons"],
            registration=registration,
            not_finite_voxels=out["not_finite_voxels"],
        )

    def _grid_affine(self) -> np.ndarray:
        return np.asarray(self.config.grid_affine(), dtype=np.float64)

    @staticmethod
    def _meta(result: ConformResult) -> dict:
        return {
            "status": result.status,
            "error": result.error,
            "qc_score": result.qc_score,
            "qc_reasons": result.qc_reasons,
            "registration": result.registration,
            "transform": None if result.transform is None else np.asarray(result.transform).tolist(),
            "timings": result.timings,
            "not_finite_voxels": result.not_finite_voxels,
        }

    def _from_cache(
        self, subject_id: str, path: Path, volume: np.ndarray | None, meta: dict
    ) -> ConformResult:
        from ermoe_ba.data.io import warn_not_finite
        from ermoe_ba.data.pipeline import assess_qc

        not_finite = int(meta.get("not_finite_voxels", 0))
        warn_not_finite(path, not_finite)
        transform = meta.get("transform")
        transform = None if transform is None else np.asarray(transform, dtype=np.float64)
        registration = dict(meta.get("registration", {}))
        status, error, reasons = meta["status"], "", []
        if status != "error":
            # QC is re-judged with the current rule, so changing a threshold needs no new cache.
            reasons = assess_qc(
                volume,
                meta["qc_score"],
                transform,
                registration.get("metric"),
                registration.get("scale"),
                self.config,
            )
            status = "qc_fail" if reasons else "ok"
            error = f"{path}: failed QC ({'; '.join(reasons)})" if reasons else ""
        return ConformResult(
            subject_id,
            path,
            status,
            error=error,
            volume=volume,
            affine=self._grid_affine(),
            qc_score=meta.get("qc_score"),
            transform=transform,
            timings=dict(meta.get("timings", {})),
            cached=True,
            qc_reasons=reasons,
            registration=registration,
            not_finite_voxels=not_finite,
        )


_WORKER: Conformer | None = None
MAX_AUTO_WORKERS = 4  # about 0.7 GB each


def auto_workers(scans: int) -> int:
    """Worker processes for ``workers=0``: one per CPU core, at most 4 and at most one per scan."""
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS, scans))


def _init_worker(config_dict: dict, cache_dir: str | None, threads: int) -> None:
    global _WORKER
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    _WORKER = Conformer(PreprocessConfig.from_dict(config_dict), cache_dir)


def _run_worker(item: ScanRecord | str | Path) -> ConformResult:
    assert _WORKER is not None
    return _WORKER(item)


def conform_records(
    records: Iterable[ScanRecord | str | Path],
    config: PreprocessConfig | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Iterator[ConformResult]:
    """Conform many scans, yielding results in input order.

    With ``workers > 1`` scans run in a pool of spawned processes (each with its share of the
    CPU threads); ``workers=0`` picks :func:`auto_workers`. N4 and registration run on one thread
    in every process (see :mod:`ermoe_ba.data.pipeline`), so results do not depend on ``workers``
    and more workers are the way to use more cores. A Python exception in one scan becomes that
    scan's error row; a hard crash of a worker process (e.g. out of memory) stops the batch.
    """
    config = config or PreprocessConfig()
    records = list(records)
    if workers == 0:
        workers = auto_workers(len(records))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc="conform", unit="scan")
    try:
        if workers <= 1 or len(records) <= 1:
            conformer = Conformer(config, cache_dir)
            for record in records:
                yield conformer(record)
                if bar is not None:
                    bar.update()
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // workers)
        init = (config.to_dict(), None if cache_dir is None else str(cache_dir), threads)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=init
        ) as pool:
            for result in pool.map(_run_worker, records, chunksize=1):
                yield result
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
