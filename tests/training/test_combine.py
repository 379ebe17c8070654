"""Combining separately trained checkpoints into one ensemble checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ermoe_ba.cli.main import app
from ermoe_ba.models import ModelEnsemble
from ermoe_ba.training.augment import AugmentConfig
from ermoe_ba.training.bias import AgeBiasCorrection
from ermoe_ba.training.checkpoint import load_checkpoint, read_meta
from ermoe_ba.training.combine import combine_checkpoints
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.run import train_brain_age

TINY = {"patch_size": 8, "embed_dim": 16, "num_heads": 2, "depth": 2}


def _train(data, path, seed: int, **overrides):
    cfg = TrainConfig(
        epochs=1, batch_size=8, progress=False, device="cpu", keep="last", seed=seed, augment=AugmentConfig(kind="none")
    )
    return train_brain_age(data, path, "ermoe_ba_tiny", {**TINY, **overrides}, cfg, val_fraction=0).checkpoint


@pytest.fixture(scope="module")
def members(tmp_path_factory, synthetic):
    folder = tmp_path_factory.mktemp("members")
    return [
        _train(synthetic, folder / "conv.safetensors", seed=0),
        _train(synthetic, folder / "pool.safetensors", seed=1000, stem="conv_pool", stem_width=4),
    ]


def test_combined_checkpoint_predicts_the_mean_of_its_members(tmp_path, synthetic, members):
    correction = AgeBiasCorrection(slope=0.8, intercept=10.0, n=50, fitted_on="out_of_fold.csv (held-out)")
    path = combine_checkpoints(members, tmp_path / "ens.safetensors", correction)
    model, meta = load_checkpoint(path)
    assert isinstance(model, ModelEnsemble) and meta["ensemble_size"] == 2
    assert [c["stem"] for c in meta["member_model_configs"]] == ["conv", "conv_pool"]
    assert meta["member_seeds"] == [0, 1000] and meta["bias_correction"]["slope"] == 0.8
    assert [f["file"] for f in meta["combined_from"]] == ["conv.safetensors", "pool.safetensors"]
    x = synthetic.volumes[:3].float()
    with torch.no_grad():
        each = [load_checkpoint(m)[0](x).output for m in members]
        torch.testing.assert_close(model(x).output, (each[0] + each[1]) / 2)
    assert not torch.allclose(each[0], each[1])


def test_members_must_share_model_grid_and_training_scans(tmp_path, synthetic, members):
    other = _train(synthetic.subset(list(range(20))), tmp_path / "fewer.safetensors", seed=0)
    with pytest.raises(ValueError, match=r"fewer\.safetensors: its target differs"):
        combine_checkpoints([members[0], other], tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="at least two"):
        combine_checkpoints(members[:1], tmp_path / "one.safetensors")
    ensemble = combine_checkpoints(members, tmp_path / "ens.safetensors")
    with pytest.raises(ValueError, match=r"ens\.safetensors: already an ensemble"):
        combine_checkpoints([ensemble, members[0]], tmp_path / "nested.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_hybrid_of_deep_and_voxel_ridge_members_round_trips(tmp_path, synthetic, members):
    from ermoe_ba.models.voxel_linear import VoxelLinear
    from ermoe_ba.training.voxel_ridge import train_voxel_ridge

    ridge, ridge_meta, _ = train_voxel_ridge(synthetic, tmp_path / "ridge.safetensors", n_components=8, inner_folds=3)
    assert ridge_meta["target"] == read_meta(members[0])["target"]  # same scans, same scaling
    path = combine_checkpoints([*members, ridge], tmp_path / "hybrid.safetensors")
    model, meta = load_checkpoint(path)
    assert meta["member_model_names"] == ["ermoe_ba_tiny", "ermoe_ba_tiny", "voxel_ridge"]
    assert isinstance(model.members[2], VoxelLinear) and model.members[2].config.input_pool == 3
    x = synthetic.volumes[:3].float()
    with torch.no_grad():
        each = [load_checkpoint(m)[0](x).output for m in [*members, ridge]]
        torch.testing.assert_close(model(x).output, sum(each) / 3)
        routed = model(x, capture_routing=True)
    assert routed.routing is not None  # maps still come from the first (ERMoE) member


def test_combine_command_writes_the_ensemble_and_reports_usage_errors(tmp_path, members):
    table = tmp_path / "oof.csv"
    table.write_text("age,predicted_age\n20,30\n40,42\n60,55\n80,68\n")
    out = tmp_path / "ens.safetensors"
    result = CliRunner().invoke(app, ["combine", *map(str, members), "-o", str(out), "--calibration", str(table)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["members"] == 2
    assert read_meta(out)["bias_correction"]["n"] == 4
    missing = CliRunner().invoke(app, ["combine", str(members[0]), str(tmp_path / "none.pt"), "-o", str(out)])
    assert missing.exit_code == 2 and "none.pt" in missing.output
    assert "shift_average" not in read_meta(out)  # predictions are not shift-averaged unless asked for
    shifted = tmp_path / "shifted.safetensors"
    args = ["combine", *map(str, members), "-o", str(shifted), "--shift-average", "cube_1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert read_meta(shifted)["shift_average"] == "cube_1"
    args = ["combine", *map(str, members), "-o", str(tmp_path / "x.pt"), "--shift-average", "x"]
    unknown = CliRunner().invoke(app, args)
    assert unknown.exit_code == 2 and "shift average 'x'" in unknown.output and not (tmp_path / "x.pt").exists()
