"""Shift averaging at prediction time, with the bundled model on a real example scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ermoe_ba
from ermoe_ba.cli.main import app
from ermoe_ba.data.conform import Conformer
from ermoe_ba.inference import BrainAgePredictor
from ermoe_ba.training.augment import whole_voxel_shift
from ermoe_ba.training.shift_average import named_offsets

EXAMPLE = Path(ermoe_ba.__file__).parent / "examples" / "IXI039-HH-1261_T1.nii.gz"


@pytest.fixture(scope="module")
def plain() -> BrainAgePredictor:
    return BrainAgePredictor.from_pretrained("default", device="cpu", shift_average="none")


@pytest.fixture(scope="module")
def volume(plain) -> np.ndarray:
    result = Conformer(plain.preprocess)(EXAMPLE)
    assert result.status == "ok", result.error
    return np.asarray(result.volume, dtype=np.float32)


def _moved(volume: np.ndarray, offset: tuple[int, int, int]) -> np.ndarray:
    x = torch.from_numpy(volume)[None, None]
    return whole_voxel_shift(x, torch.tensor([offset]))[0, 0].numpy()


def _member_age(member, volume: np.ndarray, meta: dict) -> float:
    with torch.no_grad():
        z = float(member(torch.from_numpy(volume)[None, None]).output[0, 0])
    return z * meta["target"]["std"] + meta["target"]["mean"]


def test_deep_members_average_the_shifted_copies_and_the_linear_member_reads_the_scan(plain, volume):
    averaged = BrainAgePredictor(plain.model, plain.meta, device="cpu", shift_average="axes_1")
    offsets = named_offsets("axes_1")
    members = list(plain.model.members)
    assert [getattr(m, "reads_fixed_voxels", False) for m in members] == [False, False, True]  # v7: 2 ERMoE + ridge
    deep = [[_member_age(m, _moved(volume, o), plain.meta) for o in offsets] for m in members[:2]]
    ridge = _member_age(members[2], volume, plain.meta)
    assert averaged.predict_volume(volume) == pytest.approx((np.mean(deep[0]) + np.mean(deep[1]) + ridge) / 3, abs=1e-3)
    assert plain.predict_volume(volume) == pytest.approx((deep[0][0] + deep[1][0] + ridge) / 3, abs=1e-3)  # unshifted
    assert min(np.ptp(d) for d in deep) > 0.05  # the copies differ: the average is not the plain prediction


def test_routing_is_that_of_the_scan_itself(plain, volume):
    averaged = BrainAgePredictor(plain.model, plain.meta, device="cpu", shift_average="axes_1")
    _, trace_plain = plain._run(volume[None], capture_routing=True)
    _, trace_averaged = averaged._run(volume[None], capture_routing=True)
    for layer in trace_plain.layers:
        assert torch.equal(trace_plain.layers[layer].top_k_index, trace_averaged.layers[layer].top_k_index)


def test_the_checkpoint_setting_is_the_default_and_names_are_checked(plain):
    stored = BrainAgePredictor(plain.model, {**plain.meta, "shift_average": "cube_1"}, device="cpu")
    assert stored.shift_average == "cube_1" and len(stored.offsets) == 27
    overridden = BrainAgePredictor(plain.model, {**plain.meta, "shift_average": "cube_1"}, shift_average="none")
    assert overridden.offsets == [(0, 0, 0)]
    with pytest.raises(ValueError, match="not one of"):
        BrainAgePredictor(plain.model, plain.meta, shift_average="cube_3")


def test_cli_reports_an_unknown_shift_average_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["predict", str(EXAMPLE), "-o", str(tmp_path / "p.csv"), "--shift-average", "x"])
    assert result.exit_code == 2
    assert "shift average 'x' is not one of" in result.output and "Traceback" not in result.output
