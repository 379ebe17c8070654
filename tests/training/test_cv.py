"""Cross-validation: bias correction never sees the test fold, resume skips finished folds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import torch

from ermoe_ba.training.augment import AugmentConfig, mirror_left_right
from ermoe_ba.training.bias import BiasLeakageError
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.cv import cross_validate, summarize
from ermoe_ba.training.data import VolumeSet
from ermoe_ba.training.methods import ClassicalMethod, DeepMethod, FoldPrediction, method_from_dict
from ermoe_ba.training.metrics import regression_metrics
from ermoe_ba.training.sensitivity import PERTURBATIONS, prediction_shifts
from ermoe_ba.training.shift_average import shift_offsets
from ermoe_ba.training.splits import FoldSplit, cv_splits


@dataclass
class BrainMeanMethod:
    """Linear fit of age on mean brain intensity: cheap, deterministic, shrinks towards the mean."""

    name: str = "brain_mean"
    leak: bool = False
    calls: list[int] = field(default_factory=list)
    predictor: Callable[[torch.Tensor], np.ndarray] | None = None  # exposed to the CV's test-time measures

    def fit_predict(self, data: VolumeSet, split: FoldSplit, state_dir=None) -> FoldPrediction:
        self.calls.append(split.fold)
        feature = data.volumes.float().mean(dim=(1, 2, 3, 4)).numpy()
        slope, intercept = np.polyfit(feature[split.train], data.ages[split.train], 1)
        pred = 0.5 * (slope * feature + intercept) + 0.5 * data.ages[split.train].mean()
        calib = np.concatenate([split.val, split.test]) if self.leak else split.val
        return FoldPrediction(calib, pred[calib], pred[split.test], {"load": {}}, self.predictor)

    def describe(self) -> dict:
        return {"kind": "stub"}


@pytest.fixture(scope="module")
def folds(synthetic):
    return cv_splits(synthetic.ages, synthetic.subject_ids, n_splits=3, val_fraction=0.25, seed=0)


def test_planted_test_fold_outliers_do_not_move_the_bias_correction(tmp_path, synthetic, folds):
    clean = cross_validate([BrainMeanMethod()], synthetic, folds, tmp_path / "a")["brain_mean"]
    s = synthetic
    poisoned = VolumeSet(s.volumes, s.ages.copy(), s.subject_ids, s.preprocess)
    poisoned.ages[folds[0].test] = 150.0  # outlier ages in fold 0's test part only
    dirty = cross_validate([BrainMeanMethod()], poisoned, folds[:1], tmp_path / "b")["brain_mean"]
    assert dirty[0]["bias_correction"] == clean[0]["bias_correction"]
    assert dirty[0]["bias_correction"]["n"] == len(folds[0].val)
    assert dirty[0]["metrics"]["mae"] > clean[0]["metrics"]["mae"] + 50  # the outliers were scored


def test_a_method_that_calibrates_on_test_scans_is_stopped(tmp_path, synthetic, folds):
    with pytest.raises(BiasLeakageError):
        cross_validate([BrainMeanMethod(leak=True)], synthetic, folds, tmp_path)


def test_resume_skips_finished_folds_and_summary_matches_folds(tmp_path, synthetic, folds):
    method = BrainMeanMethod()
    cross_validate([method], synthetic, folds, tmp_path, only_folds=[1])
    assert method.calls == [1] and (tmp_path / "brain_mean" / "fold1.json").is_file()
    assert not (tmp_path / "brain_mean" / "out_of_fold.csv").exists()  # only once every fold is done
    results = cross_validate([method], synthetic, folds, tmp_path)
    assert method.calls == [1, 0, 2]  # fold 1 was loaded, not rerun
    summary = summarize(results)["brain_mean"]
    files = [tmp_path / "brain_mean" / f"fold{k}.json" for k in range(3)]
    maes = [json.loads(f.read_text())["metrics"]["mae"] for f in files]
    assert summary["mae"]["mean"] == pytest.approx(np.mean(maes))
    assert summary["mae"]["sd"] == pytest.approx(np.std(maes, ddof=1))
    assert summary["pooled"]["n"] == len(synthetic)
    out_of_fold = pd.read_csv(tmp_path / "brain_mean" / "out_of_fold.csv")
    assert sorted(out_of_fold.subject_id) == sorted(synthetic.subject_ids)  # every scan once
    by_id = dict(zip(synthetic.subject_ids, synthetic.ages, strict=True))
    np.testing.assert_allclose(out_of_fold.age, out_of_fold.subject_id.map(by_id))
    pooled = [p for r in results["brain_mean"] for p in r["predicted"]]
    assert sorted(out_of_fold.predicted_age) == pytest.approx(sorted(pooled))


def test_deep_and_classical_methods_report_fold_results_and_load(tmp_path, synthetic, folds):
    recipe = TrainConfig(epochs=2, batch_size=8, progress=False, augment=AugmentConfig(kind="none"))
    moe = DeepMethod("ermoe", "ermoe_ba_tiny", {"patch_size": 8, "embed_dim": 32, "num_heads": 2}, recipe)
    methods = [moe, ClassicalMethod(factor=2, n_components=5, inner_folds=3)]
    results = cross_validate(methods, synthetic, folds[:1], tmp_path, shift_radius=1)
    deep = results["ermoe"][0]
    assert deep["n_test"] == len(folds[0].test) and len(deep["predicted"]) == len(folds[0].test)
    layers = deep["load"]
    assert layers and all(0.0 <= v["normalized_entropy"] <= 1.0 for v in layers.values())
    expected_tokens = len(folds[0].test) * 64 * moe.build(synthetic, 0).config.top_k
    assert all(sum(v["tokens_per_expert"]) == expected_tokens for v in layers.values())
    assert deep["parameters"]["active"] < deep["parameters"]["total"]
    assert results["pca_ridge"][0]["best_alpha"] > 0
    for result in (deep, results["pca_ridge"][0]):  # both expose a predictor: shifts under perturbation
        assert set(result["sensitivity"]) == set(PERTURBATIONS)
        assert all(0 <= s["mean_abs"] <= s["max_abs"] < 100 for s in result["sensitivity"].values())
        per_offset = np.asarray(result["shift_average"]["per_offset"])
        assert per_offset.shape == (len(folds[0].test), 27)
        assert np.allclose(per_offset[:, 0], result["predicted"], atol=1e-4)  # offset (0, 0, 0) comes first


def _mean_intensity_age(volumes):
    return 30.0 + 100.0 * volumes.float().mean(dim=(1, 2, 3, 4)).numpy()


def test_sensitivity_is_recorded_per_fold_and_averaged_in_the_summary(tmp_path, synthetic, folds):
    results = cross_validate([BrainMeanMethod(name="with", predictor=_mean_intensity_age)], synthetic, folds, tmp_path)
    folds_done = results["with"]
    expected = [prediction_shifts(_mean_intensity_age, synthetic.volumes[f.test]) for f in folds]
    for done, shifts in zip(folds_done, expected, strict=True):
        assert set(done["sensitivity"]) == set(shifts)
        assert all(done["sensitivity"][name] == pytest.approx(shifts[name]) for name in shifts)
    summary = summarize(results)["with"]["sensitivity"]
    for name in PERTURBATIONS:
        assert summary[name]["mean_abs"] == pytest.approx(np.mean([s[name]["mean_abs"] for s in expected]))
    assert summary["blur"]["mean_abs"] > 0  # blurring a masked brain changes its mean intensity
    without = cross_validate([BrainMeanMethod(name="without")], synthetic, folds, tmp_path)
    assert without["without"][0]["sensitivity"] == {} and "sensitivity" not in summarize(without)["without"]


def _front_back_age(volumes):
    """An 'age' that moves when the brain moves along A: the intensity-weighted mean A coordinate."""
    x = volumes.float()
    a = torch.arange(x.shape[3], dtype=torch.float32).view(1, 1, 1, -1, 1)
    return (10.0 * (x * a).sum(dim=(1, 2, 3, 4)) / x.sum(dim=(1, 2, 3, 4)).clamp_min(1e-6)).numpy()


def test_shift_average_is_the_mean_over_whole_voxel_shifts(tmp_path, synthetic, folds):
    method = BrainMeanMethod(name="tta", predictor=_front_back_age)
    results = cross_validate([method], synthetic, folds, tmp_path, shift_radius=1)
    offsets = shift_offsets(1)
    for done, split in zip(results["tta"], folds, strict=True):
        x = synthetic.volumes[split.test].float()
        expected = np.stack(
            [_front_back_age(torch.roll(x, shifts=o, dims=(2, 3, 4))) for o in offsets], axis=1
        )  # the synthetic brains sit well inside the grid, so rolling equals shifting
        record = done["shift_average"]
        assert record["radius"] == 1 and [tuple(o) for o in record["offsets"]] == offsets
        assert np.allclose(record["per_offset"], expected, atol=1e-4)
        assert np.ptp(expected, axis=1).min() > 0  # the shifts do move this predictor
        assert np.allclose(record["predicted"], expected.mean(1), atol=1e-4)
        expected_mae = regression_metrics(np.asarray(done["age"]), expected.mean(1))["mae"]
        assert record["metrics"]["mae"] == pytest.approx(expected_mae)
    summary = summarize(results)["tta"]["shift_average"]
    fold_maes = [d["shift_average"]["metrics"]["mae"] for d in results["tta"]]
    assert summary["mae"]["mean"] == pytest.approx(np.mean(fold_maes))
    plain = cross_validate([BrainMeanMethod(name="plain", predictor=_front_back_age)], synthetic, folds, tmp_path)
    assert "shift_average" not in plain["plain"][0] and "shift_average" not in summarize(plain)["plain"]


def _left_right_age(volumes):
    """An 'age' that changes when the brain is mirrored: the intensity-weighted mean R coordinate."""
    x = volumes.float()
    r = torch.arange(x.shape[2], dtype=torch.float32).view(1, 1, -1, 1, 1)
    return (10.0 * (x * r).sum(dim=(1, 2, 3, 4)) / x.sum(dim=(1, 2, 3, 4)).clamp_min(1e-6)).numpy()


def test_mirror_average_is_the_mean_of_each_scan_and_its_mirror(tmp_path, synthetic, folds):
    results = cross_validate([BrainMeanMethod(name="side", predictor=_left_right_age)], synthetic, folds, tmp_path)
    for done, split in zip(results["side"], folds, strict=True):
        mirrored = _left_right_age(mirror_left_right(synthetic.volumes[split.test]))
        record = done["mirror_average"]
        assert np.allclose(record["predicted_mirrored"], mirrored, atol=1e-4)
        assert np.abs(mirrored - _left_right_age(synthetic.volumes[split.test])).min() > 0  # the side matters here
        averaged = (np.asarray(done["predicted"]) + mirrored) / 2
        assert np.allclose(record["predicted"], averaged, atol=1e-4)
        assert record["metrics"]["mae"] == pytest.approx(regression_metrics(np.asarray(done["age"]), averaged)["mae"])
    summary = summarize(results)["side"]["mirror_average"]
    fold_maes = [d["mirror_average"]["metrics"]["mae"] for d in results["side"]]
    assert summary["mae"]["mean"] == pytest.approx(np.mean(fold_maes))
    blind = cross_validate([BrainMeanMethod(name="blind")], synthetic, folds, tmp_path)  # no predictor exposed
    assert "mirror_average" not in blind["blind"][0] and "mirror_average" not in summarize(blind)["blind"]


def test_changed_settings_rerun_a_finished_fold(tmp_path, synthetic, folds):
    method = BrainMeanMethod()
    cross_validate([method], synthetic, folds[:1], tmp_path)
    cross_validate([method], synthetic, folds[:1], tmp_path)
    assert method.calls == [0]
    method.describe = lambda: {"kind": "stub", "changed": True}
    cross_validate([method], synthetic, folds[:1], tmp_path)
    assert method.calls == [0, 0]


def test_fold_from_before_an_option_existed_is_reused_only_at_that_options_default(tmp_path, synthetic, folds):
    train = TrainConfig(epochs=1, batch_size=4, augment=AugmentConfig(kind="none"), progress=False, device="cpu")
    method = DeepMethod("old_recipe", "sfcn_tiny", {"channels": (4, 8)}, train)
    first = cross_validate([method], synthetic, folds[:1], tmp_path)["old_recipe"][0]
    path = tmp_path / "old_recipe" / "fold0.json"
    stored = json.loads(path.read_text())
    del stored["settings"]["train"]["keep"]  # as written before TrainConfig.keep was added
    path.write_text(json.dumps(stored))
    again = cross_validate([method], synthetic, folds[:1], tmp_path)["old_recipe"][0]
    assert again["seconds"] == first["seconds"]  # reused, not retrained
    method.train = TrainConfig(**{**train.to_dict(), "keep": "last"})
    rerun = cross_validate([method], synthetic, folds[:1], tmp_path)["old_recipe"][0]
    assert rerun["settings"]["train"]["keep"] == "last" and rerun["seconds"] != first["seconds"]


def test_seed_ensemble_averages_its_members(tmp_path, synthetic, folds):
    recipe = TrainConfig(epochs=2, batch_size=8, progress=False, num_threads=1, augment=AugmentConfig(kind="none"))
    tiny = {"patch_size": 8, "embed_dim": 32, "num_heads": 2, "depth": 2}
    split = folds[0]
    ensemble = DeepMethod("ens", "ermoe_ba_tiny", tiny, recipe, seeds=2).fit_predict(synthetic, split)
    members = []
    for offset in (0, 1000):
        shifted = TrainConfig.from_dict({**recipe.to_dict(), "seed": recipe.seed + offset})
        members.append(DeepMethod("one", "ermoe_ba_tiny", tiny, shifted).fit_predict(synthetic, split))
    assert not np.allclose(members[0].test_pred, members[1].test_pred)  # the members differ
    np.testing.assert_allclose(ensemble.test_pred, (members[0].test_pred + members[1].test_pred) / 2, atol=1e-4)
    np.testing.assert_allclose(
        ensemble.calibration_pred, (members[0].calibration_pred + members[1].calibration_pred) / 2, atol=1e-4
    )
    assert [m["seed"] for m in ensemble.info["members"]] == [split.fold, split.fold + 1000]
    for stored, member in zip(ensemble.info["members"], members, strict=True):
        np.testing.assert_allclose(stored["test_pred"], member.test_pred, atol=1e-4)
    for layer, load in ensemble.info["load"].items():
        expected = (np.array(members[0].info["load"][layer]["cv"]) + members[1].info["load"][layer]["cv"]) / 2
        assert load["cv"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="seeds=0"):
        DeepMethod("bad", "ermoe_ba_tiny", tiny, recipe, seeds=0)


def test_member_overrides_train_one_member_per_architecture(tmp_path, synthetic, folds):
    recipe = TrainConfig(epochs=1, batch_size=8, progress=False, num_threads=1, augment=AugmentConfig(kind="none"))
    tiny = {"patch_size": 8, "embed_dim": 32, "num_heads": 2, "depth": 2}
    stems = [{}, {"stem": "conv_pool", "stem_width": 4}]
    method = DeepMethod("stems", "ermoe_ba_tiny", tiny, recipe, member_overrides=stems)
    assert method.variants == [tiny, {**tiny, **stems[1]}]
    result = method.fit_predict(synthetic, folds[0])
    assert len(result.info["members"]) == 2
    alone = DeepMethod("pool", "ermoe_ba_tiny", {**tiny, **stems[1]}, dataclasses.replace(recipe, seed=1000))
    np.testing.assert_allclose(
        result.info["members"][1]["test_pred"], alone.fit_predict(synthetic, folds[0]).test_pred, atol=1e-4
    )  # member 1 is the conv_pool stem with seed + 1000
    assert method.describe()["member_overrides"] == stems
    assert "member_overrides" not in DeepMethod("one", "ermoe_ba_tiny", tiny, recipe).describe()
    with pytest.raises(ValueError, match="method 'bad'"):
        DeepMethod("bad", "ermoe_ba_tiny", tiny, recipe, seeds=3, member_overrides=stems)


def test_summary_reports_single_members_of_seed_ensembles():
    age = np.array([20.0, 40.0, 60.0, 80.0])
    members = [{"test_pred": (age + 2).tolist()}, {"test_pred": (age - 6).tolist()}]
    fold = {"fold": 0, "age": age.tolist(), "predicted": (age - 2).tolist(), "members": members, "load": {}}
    fold["metrics"] = {"mae": 2.0, "rmse": 2.0, "r": 1.0, "r2": 0.9, "gap_slope": 0.0}
    fold["metrics"]["corrected"] = {"mae": 2.0, "gap_slope": 0.0}
    summary = summarize({"ens": [fold]})["ens"]
    assert summary["single_model"]["mae"]["mean"] == pytest.approx(4.0)  # members err by 2 and 6 years
    assert summary["mae"]["mean"] == pytest.approx(2.0)
    assert "single_model" not in summarize({"one": [{**fold, "members": None}]})["one"]


def test_a_fold_without_recorded_settings_is_run_again(tmp_path, synthetic, folds):
    method = BrainMeanMethod()
    cross_validate([method], synthetic, folds[:1], tmp_path)
    path = tmp_path / "brain_mean" / "fold0.json"
    legacy = json.loads(path.read_text())
    del legacy["settings"]
    path.write_text(json.dumps(legacy))
    cross_validate([method], synthetic, folds[:1], tmp_path)
    assert method.calls == [0, 0]
    assert "settings" in json.loads(path.read_text())


def test_building_a_method_leaves_its_config_entry_unchanged():
    # the pipeline builds every method twice from one config (this run, then the report); an entry's own
    # augment settings were once popped out of the config by the first build, so the report lost the method
    spec = {"name": "blur", "kind": "deep", "model_name": "ermoe_ba_tiny", "train": {"augment": {"blur_prob": 0.5}}}
    first, second = method_from_dict(spec), method_from_dict(spec)
    assert first.train.augment.blur_prob == second.train.augment.blur_prob == 0.5
    assert spec["train"] == {"augment": {"blur_prob": 0.5}}


def test_a_killed_fold_continues_from_its_last_epoch(tmp_path, synthetic, folds, monkeypatch):
    import ermoe_ba.training.loop as loop

    recipe = TrainConfig(epochs=3, batch_size=8, progress=False, num_threads=1, augment=AugmentConfig(shift=2))
    tiny = {"patch_size": 8, "embed_dim": 32, "num_heads": 2, "depth": 2}
    method = DeepMethod("tiny", "ermoe_ba_tiny", tiny, recipe)
    expected = cross_validate([method], synthetic, folds[:1], tmp_path / "straight")["tiny"][0]

    real_save, saved = loop.save_training_state, []

    def save_then_die(path, state, config, model):
        real_save(path, state, config, model)
        saved.append(state["next_epoch"])
        if state["next_epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cross_validate([method], synthetic, folds[:1], tmp_path / "run")
    state_dir = tmp_path / "run" / "tiny" / "fold0.train-state"
    assert (state_dir / "member0.pt").is_file()
    got = cross_validate([method], synthetic, folds[:1], tmp_path / "run")["tiny"][0]
    assert saved == [1, 2, 3]  # the rerun trained only the last epoch
    assert got["predicted"] == expected["predicted"] and not state_dir.exists()

    saved.clear()
    monkeypatch.setattr(loop, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cross_validate([method], synthetic, folds[:1], tmp_path / "changed")
    method.train = dataclasses.replace(recipe, lr=3e-4)  # the kept state is of the old recipe: start afresh
    monkeypatch.undo()
    again = cross_validate([method], synthetic, folds[:1], tmp_path / "changed")["tiny"][0]
    assert again["settings"]["train"]["lr"] == 3e-4 and len(again["history"]) == 3
