"""MONAI transforms wrap the same code path as Conformer (same volume, grid affine, QC in meta)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conform_helpers import ixi_scans, save_nifti
from monai.data import MetaTensor
from monai.transforms import Compose

from ermoe_ba.data.conform import Conformer
from ermoe_ba.data.transforms import ConformError, ConformT1, ConformT1d
from ermoe_ba.models.config import PreprocessConfig


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_array_and_dict_forms_match_the_conformer(cache: Path) -> None:
    scan = ixi_scans()[0]
    config = PreprocessConfig()
    expected = Conformer(config, cache)(scan)
    image = ConformT1(config, cache)(scan)
    assert isinstance(image, MetaTensor) and tuple(image.shape) == (1, *config.grid_shape)
    np.testing.assert_array_equal(image[0].numpy(), expected.volume)
    np.testing.assert_allclose(image.affine.numpy(), config.grid_affine())
    assert image.meta["qc_status"] == "ok" and image.meta["qc_score"] == pytest.approx(expected.qc_score)
    np.testing.assert_allclose(image.meta["native_transform"].numpy(), expected.transform)
    pipeline = Compose([ConformT1d("image", config, cache)])
    sample = pipeline({"image": str(scan), "age": 46.7})
    assert sample["age"] == 46.7
    assert torch.equal(sample["image"].as_tensor(), image.as_tensor())


def test_errors_raise_or_become_zero_volumes(tmp_path: Path) -> None:
    bad = save_nifti(tmp_path / "zero.nii.gz", np.zeros((60, 70, 50), np.float32))
    with pytest.raises(ConformError, match="all zero"):
        ConformT1()(bad)
    image = ConformT1(on_error="zeros")(bad)
    assert image.meta["qc_status"] == "error" and not image.any()
    with pytest.raises(ValueError, match="on_error"):
        ConformT1(on_error="skip")
