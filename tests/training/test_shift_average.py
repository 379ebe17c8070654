"""Shift averaging: offsets, per-offset predictions, and scoring subsets of recorded offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ermoe_ba.training.augment import whole_voxel_shift
from ermoe_ba.training.shift_average import OFFSET_SETS, shift_offsets, shifted_predictions, with_shift_average


def _first_voxel(volumes: torch.Tensor) -> np.ndarray:
    return volumes[:, 0, 0, 0, 0].numpy().astype(float)


def test_offsets_cover_the_cube_once_with_the_scan_itself_first():
    offsets = shift_offsets(2)
    assert offsets[0] == (0, 0, 0) and len(offsets) == len(set(offsets)) == 125
    assert {max(map(abs, o)) for o in offsets} == {0, 1, 2}
    assert shift_offsets(0) == [(0, 0, 0)]
    with pytest.raises(ValueError, match="radius"):
        shift_offsets(-1)


def test_each_column_is_the_prediction_of_the_scan_moved_by_that_offset():
    volumes = torch.arange(2 * 5 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5, 5)
    offsets = shift_offsets(1)
    out = shifted_predictions(_first_voxel, volumes, offsets, batch_size=1)
    for j, offset in enumerate(offsets):
        moved = whole_voxel_shift(volumes, torch.tensor([offset, offset]))
        assert np.array_equal(out[:, j], _first_voxel(moved))
    assert out[0, offsets.index((-1, -1, -1))] == volumes[0, 0, 1, 1, 1]  # content moves towards the origin


def test_offset_sets_have_their_sizes():
    sizes = {name: sum(keep(o) for o in shift_offsets(2)) for name, keep in OFFSET_SETS.items()}
    assert sizes == {"none": 1, "axes_1": 7, "cube_1": 27, "even_2": 27, "cube_2": 125}


def test_subsets_of_recorded_offsets_are_averaged_per_scan():
    offsets = shift_offsets(1)
    per_offset = np.arange(2 * 27, dtype=float).reshape(2, 27)
    fold = {"fold": 0, "predicted": [0.0, 27.0], "shift_average": {"offsets": offsets, "per_offset": per_offset}}
    (none,) = with_shift_average([fold], OFFSET_SETS["none"])
    assert none["predicted"] == [0.0, 27.0] and fold["predicted"] == [0.0, 27.0]
    (axes,) = with_shift_average([fold], OFFSET_SETS["axes_1"])
    columns = [j for j, o in enumerate(offsets) if sum(map(abs, o)) <= 1]
    assert axes["predicted"] == pytest.approx(per_offset[:, columns].mean(1))
    with pytest.raises(ValueError, match="no shift-averaged"):
        with_shift_average([{"fold": 1, "predicted": [1.0]}], OFFSET_SETS["none"])
    with pytest.raises(ValueError, match="no recorded offset"):
        with_shift_average([fold], lambda o: False)
