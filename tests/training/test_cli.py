"""``ermoe-ba train`` and ``ermoe-ba evaluate`` through typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ermoe_ba.cli.main import app
from ermoe_ba.training.checkpoint import read_meta
from ermoe_ba.training.metrics import regression_metrics

runner = CliRunner()


def _scans_table(tmp_path, real_scans):
    """A CSV table (subject_id, path, age) of the real test scans."""
    table = tmp_path / "scans.csv"
    pd.DataFrame({"subject_id": real_scans.subject_ids, "path": real_scans.paths, "age": real_scans.ages}).to_csv(
        table, index=False
    )
    return table


@pytest.mark.parametrize(
    ("option", "value", "hint"),
    [("--model", "ermoe_ba_tiyn", "ermoe_ba_tiny"), ("--keep", "newest", "'best', 'last'")],
)
def test_bad_option_is_a_usage_error_with_a_hint(tmp_path, option, value, hint):
    table = tmp_path / "t.csv"
    table.write_text("path,age\nx.nii.gz,40\n")
    result = runner.invoke(app, ["train", str(table), "--out", str(tmp_path / "m.pt"), option, value])
    assert result.exit_code == 2
    assert hint in result.output


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--val-fraction", "0"], "use it with --keep last"),
        (["--calibration", "missing.csv"], "missing.csv: cannot read"),
        (["--member", "{stem"], "--member '{stem' is not a JSON object"),
        (["--member", "{}", "--member", '{"stem": "sfcn"}'], "conv_pool"),
        (["--seeds", "3", "--member", "{}", "--member", "{}"], "seeds=3 disagrees with 2 member_overrides"),
        (["--val-fraction", "0.6"], "val_fraction=0.6 must be 0 (train on every scan) or lie in (0, 0.5)"),
        (["--set", "embed_dim=abc"], "ModelConfig.embed_dim='abc': expected an integer"),
        (["--set", "qkv_bias=1"], "ModelConfig.qkv_bias=1: expected true or false"),
        (["--loss", "kl_bins"], "loss='kl_bins' needs a model with a binned head"),
        (["--loss", "kl_bin"], "Did you mean 'kl_bins'?"),
        (["--set", "output_bins=1", "--loss", "kl_bins"], "a binned head needs at least 2 bins"),
    ],
)
def test_training_on_every_scan_needs_keep_last_and_a_readable_calibration(tmp_path, extra, problem):
    table = tmp_path / "t.csv"
    table.write_text("path,age\nx.nii.gz,40\n")
    result = runner.invoke(app, ["train", str(table), "--out", str(tmp_path / "m.pt"), *extra])
    assert result.exit_code == 2
    assert problem in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_the_scans_are_conformed(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("path,age\nx.nii.gz,40\n")  # x.nii.gz does not exist: conforming would fail first
    result = runner.invoke(app, ["train", str(table), "--out", str(tmp_path / "m.pt"), "--device", "cuda"])
    assert result.exit_code == 2 and "torch sees no CUDA device" in result.output
    result = runner.invoke(app, ["evaluate", "default", str(table), "--out", str(tmp_path / "ev"), "--device", "cuda"])
    assert result.exit_code == 2 and "torch sees no CUDA device" in result.output


def test_a_folder_as_checkpoint_name_is_refused_before_training(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("path,age\nx.nii.gz,40\n")  # x.nii.gz does not exist: reaching the data would fail otherwise
    folder = tmp_path / "models"
    folder.mkdir()
    result = runner.invoke(app, ["train", str(table), "--out", str(folder)])
    said = " ".join(result.output.replace("│", " ").split())  # the message as rich's box wraps it
    assert result.exit_code == 2 and "is a folder; give a file name inside it" in said
    assert list(folder.iterdir()) == [] and not (tmp_path / "models.train-state").exists()


def test_evaluate_missing_checkpoint_exits_2(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "none.safetensors"), str(tmp_path), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "none.safetensors" in result.output


@pytest.mark.slow
def test_evaluate_takes_the_bundled_model_by_name(tmp_path):
    from importlib import resources

    examples = Path(str(resources.files("ermoe_ba") / "examples"))
    args = ["evaluate", "default", str(examples), "--ages", str(examples / "ages.csv"), "-o", str(tmp_path / "ev")]
    result = runner.invoke(app, [*args, "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["n"] == 3 and np.isfinite(metrics["mae"])
    table = pd.read_csv(tmp_path / "ev" / "predictions.csv")
    assert len(table) == 3 and (tmp_path / "ev" / "scatter.png").is_file()


def test_evaluate_without_scans_exits_2_and_makes_no_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["evaluate", "default", str(empty), "-o", str(tmp_path / "ev"), "--device", "cpu"])
    assert result.exit_code == 2 and f"no scans found in {empty}" in result.output
    assert not (tmp_path / "ev").exists()


def test_evaluate_unknown_device_exits_2_naming_the_choices(tmp_path):
    args = ["evaluate", str(tmp_path / "m.safetensors"), str(tmp_path), "-o", str(tmp_path), "--device", "gpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "gpu" in result.output and "cuda" in result.output


@pytest.mark.slow
def test_keep_last_trains_every_epoch_and_records_the_recipe(tmp_path, real_scans):
    table = _scans_table(tmp_path, real_scans)
    ckpt = tmp_path / "model.safetensors"
    args = ["train", str(table), "-o", str(ckpt), "--epochs", "3", "--batch-size", "2", "--no-progress",
            "--val-fraction", "0.25", "--keep", "last", "--patience", "1", "--blur-prob", "0.5",
            "--subvoxel-prob", "1", "--flip-lr", "--shift", "3", "--affine-prob", "0.5", "--bias-prob", "0.25",
            "--gamma-prob", "0.125", "--noise-prob", "0.75", "--mixup-alpha", "0.4",
            "--mixup-bandwidth", "0.5"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = read_meta(ckpt)
    assert meta["train_config"]["keep"] == "last" and meta["train_config"]["patience"] == 0
    augment = meta["train_config"]["augment"]
    assert augment["blur_prob"] == 0.5 and augment["subvoxel_prob"] == 1 and augment["flip_lr"] is True
    assert augment["shift"] == 3 and augment["affine_prob"] == 0.5 and augment["bias_prob"] == 0.25
    assert augment["gamma_prob"] == 0.125 and augment["noise_prob"] == 0.75
    assert meta["train_config"]["mixup_alpha"] == 0.4 and meta["train_config"]["mixup_bandwidth"] == 0.5
    assert len(meta["history"]) == 3 and meta["best_epoch"] == 2


def test_soft_label_loss_trains_a_binned_head_on_real_scans(tmp_path, real_scans):
    table = _scans_table(tmp_path, real_scans)
    ckpt = tmp_path / "binned.safetensors"
    args = ["train", str(table), "-o", str(ckpt), "--epochs", "2", "--batch-size", "2", "--no-progress",
            "--val-fraction", "0.25", "--augment", "none", "--loss", "kl_bins", "--set", "output_bins=20"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = read_meta(ckpt)
    assert meta["train_config"]["loss"] == "kl_bins" and meta["model_config"]["output_bins"] == 20
    assert all(np.isfinite(h["train_loss"]) and h["train_loss"] > 0 for h in meta["history"])
    assert 0 < json.loads(result.output.strip().splitlines()[-1])["mae"] < 60
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(ckpt), str(table), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    from ermoe_ba.training.checkpoint import load_checkpoint
    from ermoe_ba.training.loop import TargetScaler, predict

    model, meta = load_checkpoint(ckpt)
    expected, _ = predict(model, real_scans.volumes.float(), TargetScaler(**meta["target"]))  # the bins' mean
    table_ages = pd.read_csv(out / "predictions.csv").set_index("subject_id").loc[real_scans.subject_ids]
    np.testing.assert_allclose(table_ages["predicted_age"], expected, atol=1e-3)


def test_member_options_train_a_two_stem_ensemble_on_real_scans(tmp_path, real_scans):
    table = _scans_table(tmp_path, real_scans)
    ckpt = tmp_path / "stems.safetensors"
    args = ["train", str(table), "-o", str(ckpt), "--epochs", "1", "--batch-size", "2", "--no-progress",
            "--val-fraction", "0.25", "--augment", "none",
            "--member", "{}", "--member", '{"stem": "conv_pool", "stem_width": 4}']  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = read_meta(ckpt)
    assert meta["ensemble_size"] == 2 and meta["member_seeds"] == [0, 1000]
    assert [c["stem"] for c in meta["member_model_configs"]] == ["conv", "conv_pool"]


def test_voxel_ridge_fits_the_linear_member_on_real_scans(tmp_path, real_scans):
    import torch

    from ermoe_ba.training.checkpoint import load_checkpoint
    from ermoe_ba.training.classical import PcaRidgeBrainAge

    table = _scans_table(tmp_path, real_scans)
    ckpt = tmp_path / "ridge.safetensors"
    result = runner.invoke(app, ["train", str(table), "-o", str(ckpt), "--model", "voxel_ridge", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["n_scans"] == len(real_scans.ages)
    model, meta = load_checkpoint(ckpt)
    assert meta["model_name"] == "voxel_ridge" and meta["training_data"]["validation_subject_ids"] == []
    assert meta["train_config"]["inner_folds"] == len(real_scans.ages)  # 4 scans: leave-one-out
    with torch.no_grad():
        z = model(real_scans.volumes.float()).output.squeeze(1).double().numpy()
    reference = PcaRidgeBrainAge(factor=3, inner_folds=4).fit(real_scans.volumes, real_scans.ages)
    fitted = z * meta["target"]["std"] + meta["target"]["mean"]
    np.testing.assert_allclose(fitted, reference.predict(real_scans.volumes.float()), atol=1e-3)


@pytest.mark.slow
def test_every_scan_trains_and_the_calibration_table_sets_the_correction(tmp_path, real_scans):
    table = _scans_table(tmp_path, real_scans)
    calibration = tmp_path / "out_of_fold.csv"
    pd.DataFrame({"age": [20.0, 40.0, 60.0, 80.0], "predicted_age": [32.0, 44.0, 56.0, 68.0]}).to_csv(calibration)
    ckpt = tmp_path / "model.safetensors"
    args = ["train", str(table), "-o", str(ckpt), "--epochs", "2", "--batch-size", "2", "--no-progress",
            "--val-fraction", "0", "--keep", "last", "--calibration", str(calibration)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = read_meta(ckpt)
    assert meta["training_data"]["n_scans"] == len(real_scans.ages)
    assert meta["training_data"]["validation_subject_ids"] == []
    correction = meta["bias_correction"]
    assert correction["slope"] == pytest.approx(0.6) and correction["intercept"] == pytest.approx(20.0)
    assert correction["fitted_on"] == "out_of_fold.csv (held-out)"


@pytest.mark.slow
def test_train_then_evaluate_on_real_scans(tmp_path, real_scans):
    table = _scans_table(tmp_path, real_scans)
    ckpt = tmp_path / "model.safetensors"
    args = ["train", str(table), "-o", str(ckpt), "--epochs", "2", "--batch-size", "2", "--no-progress",
            "--val-fraction", "0.25", "--router", "softmax", "--augment", "none"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert line["n_scans"] == 4 and ckpt.is_file()
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(ckpt), str(table), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "predictions.csv")
    assert metrics["mae"] == pytest.approx(regression_metrics(preds.age, preds.predicted_age)["mae"])
    np.testing.assert_allclose(np.sort(preds.age), np.sort(real_scans.ages))
    assert (out / "scatter.png").stat().st_size > 1000
    import torch

    from ermoe_ba.training.augment import whole_voxel_shift
    from ermoe_ba.training.checkpoint import load_checkpoint
    from ermoe_ba.training.loop import TargetScaler, predict
    from ermoe_ba.training.shift_average import named_offsets

    shifted_out = tmp_path / "eval_shifted"
    args = ["evaluate", str(ckpt), str(table), "-o", str(shifted_out), "--no-progress", "--shift-average", "axes_1"]
    assert runner.invoke(app, args).exit_code == 0
    assert json.loads((shifted_out / "metrics.json").read_text())["shift_average"] == "axes_1"
    model, meta = load_checkpoint(ckpt)
    volumes, n = real_scans.volumes.float(), len(real_scans.ages)
    copies = [
        predict(model, whole_voxel_shift(volumes, torch.tensor([o] * n)), TargetScaler(**meta["target"]))[0]
        for o in named_offsets("axes_1")
    ]
    shifted = pd.read_csv(shifted_out / "predictions.csv").set_index("subject_id")
    expected = np.mean(copies, axis=0)
    np.testing.assert_allclose(shifted.loc[real_scans.subject_ids, "predicted_age"], expected, atol=1e-3)
    assert np.abs(expected - preds.set_index("subject_id").loc[real_scans.subject_ids, "predicted_age"]).max() > 1e-3


def test_resume_continues_a_killed_training_to_the_uninterrupted_checkpoint(tmp_path, real_scans, monkeypatch):
    import ermoe_ba.training.loop as loop
    from ermoe_ba.training.checkpoint import load_checkpoint

    table = _scans_table(tmp_path, real_scans)
    recipe = ["--epochs", "2", "--batch-size", "2", "--no-progress", "--val-fraction", "0.25", "--keep", "last"]
    straight, ckpt = tmp_path / "straight.safetensors", tmp_path / "model.safetensors"
    assert runner.invoke(app, ["train", str(table), "-o", str(straight), *recipe]).exit_code == 0

    real_save = loop.save_training_state

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the first epoch's state was written

    monkeypatch.setattr(loop, "save_training_state", save_then_die)
    killed = runner.invoke(app, ["train", str(table), "-o", str(ckpt), *recipe])
    assert killed.exit_code != 0 and not ckpt.exists()
    state_dir = tmp_path / "model.safetensors.train-state"
    assert (state_dir / "member0.pt").is_file()
    monkeypatch.undo()

    other_recipe = runner.invoke(app, ["train", str(table), "-o", str(ckpt), *recipe, "--lr", "0.01", "--resume"])
    assert other_recipe.exit_code == 2 and "another recipe (lr: 0.001 there, 0.01 now)" in other_recipe.output
    result = runner.invoke(app, ["train", str(table), "-o", str(ckpt), *recipe, "--resume"])
    assert result.exit_code == 0, result.output
    assert not state_dir.exists()
    assert [h["epoch"] for h in read_meta(ckpt)["history"]] == [0, 1]
    expected, got = load_checkpoint(straight)[0].state_dict(), load_checkpoint(ckpt)[0].state_dict()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name

    state_dir.mkdir()
    (state_dir / "member0.pt").write_bytes(b"left over")
    fresh = runner.invoke(app, ["train", str(table), "-o", str(ckpt), *recipe])
    assert fresh.exit_code == 0 and "starting afresh" in fresh.output and not state_dir.exists()
