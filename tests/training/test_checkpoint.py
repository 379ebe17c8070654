"""Checkpoints: identical predictions after a round trip, weights-only loading, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ermoe_ba.models.sfcn  # noqa: F401
from ermoe_ba import __version__
from ermoe_ba.models import create_model
from ermoe_ba.models.config import ModelConfig, PreprocessConfig
from ermoe_ba.training.augment import AugmentConfig
from ermoe_ba.training.checkpoint import build_meta, load_checkpoint, read_meta, save_checkpoint
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.data import VolumeSet
from ermoe_ba.training.run import train_brain_age

GRID = PreprocessConfig(grid_shape=(32, 32, 32), grid_origin=(-32.0, -32.0, -32.0))  # as in conftest


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("sfcn_tiny", {"channels": (4, 8, 16)}),
        ("sfcn_tiny", {"channels": (4, 8, 16), "output_bins": 20}),
        ("ermoe_ba_tiny", {"patch_size": 8, "embed_dim": 32, "num_heads": 2, "router": "softmax"}),
        ("ermoe_ba_tiny", {"patch_size": 8, "embed_dim": 32, "num_heads": 2, "router": "ermoe"}),
    ],
)
def test_round_trip_gives_identical_predictions(tmp_path, synthetic, suffix, name, overrides):
    torch.manual_seed(1)
    model = create_model(name, preprocess=GRID, **overrides)
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        model.train()
        model(synthetic.volumes[:8].float())
    model.eval()
    meta = build_meta(model, name, model_overrides=overrides, preprocess=GRID, target={"mean": 50, "std": 15})
    path = save_checkpoint(tmp_path / f"m{suffix}", model, meta)
    loaded, meta2 = load_checkpoint(path)
    x = synthetic.volumes[:5].float()
    with torch.no_grad():
        before, after = model(x).output, loaded(x).output
    if overrides.get("router") == "ermoe":  # loading re-orthonormalises the bases: float32 rounding only
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(before, after)
    assert ModelConfig.from_dict(meta2["model_config"]) == model.config == loaded.config
    assert meta2["preprocess"]["grid_shape"] == list(GRID.grid_shape)
    assert meta2["package_version"] == __version__ and meta2["target"] == {"mean": 50, "std": 15}
    assert read_meta(path) == meta2
    if suffix == ".pt":  # nothing but tensors and strings: loads with weights_only=True
        payload = torch.load(path, weights_only=True)
        assert json.loads(payload["meta_json"])["model_name"] == name


def test_not_a_checkpoint_raises_with_the_path(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        load_checkpoint(tmp_path / "missing.safetensors")
    foreign = {"table.csv": b"a,b\n1,2\n", "cut.safetensors": b"garbage", "cut.pt": b"\x80\x02garbage"}
    for name, content in foreign.items():  # one ValueError naming the file, whatever the reader raised
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name} is not a readable ermoe-ba checkpoint \("):
            read_meta(tmp_path / name)


def test_train_brain_age_stores_target_stats_bias_and_data_description(tmp_path, synthetic):
    ixi = VolumeSet(synthetic.volumes, synthetic.ages, [f"IXI{i:03d}-HH-1" for i in range(24)], GRID)
    cfg = TrainConfig(epochs=3, batch_size=8, progress=False, device="cpu", augment=AugmentConfig(kind="none"))
    result = train_brain_age(ixi, tmp_path / "m.safetensors", "sfcn_tiny", {"channels": (4, 8, 16)}, cfg)
    meta = read_meta(result.checkpoint)
    train_ids = meta["training_data"]["subject_ids"]
    val_ids = meta["training_data"]["validation_subject_ids"]
    assert not set(train_ids) & set(val_ids) and len(train_ids) + len(val_ids) == 24
    train_ages = ixi.ages[[ixi.subject_ids.index(s) for s in train_ids]]
    assert meta["target"]["mean"] == pytest.approx(train_ages.mean())
    assert meta["target"]["std"] == pytest.approx(train_ages.std())
    assert meta["training_data"]["licence"] == "CC BY-SA 3.0"
    assert "IXI" in meta["training_data"]["attribution"]
    assert meta["train_config"]["epochs"] == 3
    # the stored correction is the least-squares line of the saved model's validation predictions on age
    model, _ = load_checkpoint(result.checkpoint)
    val = [ixi.subject_ids.index(s) for s in val_ids]
    with torch.no_grad():
        standardized = model.eval()(ixi.volumes[val].float()).output[:, 0].double().numpy()
    predicted = standardized * meta["target"]["std"] + meta["target"]["mean"]
    slope, intercept = np.polyfit(ixi.ages[val], predicted, 1)
    stored = meta["bias_correction"]
    assert stored["fitted_on"] == "validation" and stored["n"] == len(val_ids)
    assert stored["slope"] == pytest.approx(slope, rel=1e-4)
    assert stored["intercept"] == pytest.approx(intercept, rel=1e-4)
    assert meta["validation_metrics"]["mae"] == pytest.approx(np.abs(predicted - ixi.ages[val]).mean(), rel=1e-4)


def test_seed_ensemble_trains_saves_and_loads_as_the_mean_of_its_members(tmp_path, synthetic):
    from ermoe_ba.models import ModelEnsemble

    cfg = TrainConfig(epochs=2, batch_size=8, progress=False, device="cpu", augment=AugmentConfig(kind="none"))
    tiny = {"patch_size": 8, "embed_dim": 16, "num_heads": 2, "depth": 2}
    result = train_brain_age(synthetic, tmp_path / "ens.safetensors", "ermoe_ba_tiny", tiny, cfg, seeds=2)
    model, meta = load_checkpoint(result.checkpoint)
    assert isinstance(model, ModelEnsemble) and len(model.members) == 2
    assert meta["ensemble_size"] == 2 and meta["member_seeds"] == [0, 1000]
    x = synthetic.volumes[:4].float()
    with torch.no_grad():
        members = [m(x).output for m in model.members]
        torch.testing.assert_close(model(x).output, (members[0] + members[1]) / 2)
        torch.testing.assert_close(model(x).output, result.model.eval()(x).output, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(members[0], members[1])  # two trainings, not one copied
    with pytest.raises(ValueError, match="seeds=0"):
        train_brain_age(synthetic, None, "ermoe_ba_tiny", tiny, cfg, seeds=0)


def test_two_stem_ensemble_records_each_members_architecture_and_loads_back(tmp_path, synthetic):
    from ermoe_ba.models import ModelEnsemble

    cfg = TrainConfig(epochs=2, batch_size=8, progress=False, device="cpu", augment=AugmentConfig(kind="none"))
    tiny = {"patch_size": 8, "embed_dim": 16, "num_heads": 2, "depth": 2}
    stems = [{}, {"stem": "conv_pool", "stem_width": 4}]
    result = train_brain_age(
        synthetic, tmp_path / "stems.safetensors", "ermoe_ba_tiny", tiny, cfg, member_overrides=stems
    )
    model, meta = load_checkpoint(result.checkpoint)
    assert isinstance(model, ModelEnsemble)
    assert [m.config.stem for m in model.members] == [create_model("ermoe_ba_tiny").config.stem, "conv_pool"]
    assert meta["ensemble_size"] == 2 and meta["member_overrides"] == stems
    assert [c["stem"] for c in meta["member_model_configs"]] == [m.config.stem for m in model.members]
    x = synthetic.volumes[:4].float()
    with torch.no_grad():
        torch.testing.assert_close(model(x).output, result.model.eval()(x).output, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="seeds=3 disagrees with 2 member_overrides"):
        train_brain_age(synthetic, None, "ermoe_ba_tiny", tiny, cfg, seeds=3, member_overrides=stems)


def test_training_on_every_scan_needs_keep_last_and_stores_the_given_correction(synthetic):
    from ermoe_ba.training.bias import AgeBiasCorrection

    cfg = TrainConfig(epochs=2, batch_size=8, progress=False, device="cpu", augment=AugmentConfig(kind="none"))
    small = {"channels": (4, 8, 16)}
    with pytest.raises(ValueError, match="keep='last'"):
        train_brain_age(synthetic, None, "sfcn_tiny", small, cfg, val_fraction=0.0)
    given = AgeBiasCorrection(0.8, 9.0, 129, "out_of_fold.csv (held-out)")
    cfg = TrainConfig(**{**cfg.to_dict(), "keep": "last", "augment": AugmentConfig(kind="none")})
    result = train_brain_age(synthetic, None, "sfcn_tiny", small, cfg, val_fraction=0.0, bias_correction=given)
    assert result.meta["training_data"]["n_scans"] == len(synthetic.ages)
    assert result.meta["bias_correction"] == given.to_dict() and result.val_metrics == {"n": 0}


def test_training_on_every_scan_without_calibration_says_what_to_pass(tmp_path, synthetic, caplog):
    cfg = TrainConfig(epochs=1, batch_size=8, keep="last", progress=False, device="cpu", augment=AugmentConfig("none"))
    with caplog.at_level("WARNING", logger="ermoe_ba.training.run"):
        result = train_brain_age(synthetic, tmp_path / "m.safetensors", "sfcn_tiny", {"channels": (4, 8)}, cfg, 0.0)
    assert read_meta(result.checkpoint)["bias_correction"]["fitted_on"] == "none"
    assert "--calibration" in caplog.text and "no validation scans" in caplog.text
