"""Fixtures: a synthetic cohort whose age is written into the images, and a few real IXI scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.training.data import VolumeSet

SMALL_GRID = PreprocessConfig(grid_shape=(32, 32, 32), grid_origin=(-32.0, -32.0, -32.0))


def synthetic_cohort(n: int = 24, seed: int = 0, grid: PreprocessConfig = SMALL_GRID) -> VolumeSet:
    """Brain-like blobs whose central 'ventricle' grows with age (background exactly 0)."""
    rng = np.random.default_rng(seed)
    ages = np.sort(rng.uniform(20, 80, n))
    shape = grid.grid_shape
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = np.sqrt(zz**2 + yy**2 + xx**2)
    vols = []
    for age in ages:
        brain = (radius < 0.8).astype(np.float32)
        ventricle = radius < 0.15 + 0.4 * (age - 20) / 60
        img = brain * (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        img[ventricle] = -1.0
        vols.append(img * brain)
    volumes = torch.from_numpy(np.stack(vols)).unsqueeze(1).half()
    ids = [f"sub-{i:03d}" for i in range(n)]
    return VolumeSet(volumes, ages, ids, grid, source="synthetic")


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """One torch thread: on a busy 2-core machine two threads thrash (a step ran 10-30x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synthetic() -> VolumeSet:
    return synthetic_cohort()


@pytest.fixture(scope="session")
def real_scans(ixi_dir: Path) -> VolumeSet:
    """Four real IXI scans (the first with ages, by file name) conformed to the default grid."""
    import pandas as pd

    from ermoe_ba.data.discovery import ScanRecord
    from ermoe_ba.training.data import load_volumes

    rows = pd.read_csv(ixi_dir / "ages.csv").dropna(subset=["age"]).sort_values("file").head(4)
    records = [ScanRecord(r.subject_id, ixi_dir / r.file, float(r.age), "table") for r in rows.itertuples()]
    return load_volumes(records, PreprocessConfig(), progress=False, source="IXI-HH test subset", workers=2)
