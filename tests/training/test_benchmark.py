"""The comparison report: improvement over the best other method, load against softmax."""

from __future__ import annotations

import json

import pytest

from ermoe_ba.training.benchmark import compare_to_reference, load_pipeline_config


def _summary(mae: float, load: float | None = None) -> dict:
    return {"mae": {"mean": mae, "sd": 0.5, "n": 5}, "load_cv_mean": load}


def test_improvement_is_relative_to_the_best_other_method():
    summary = {"ermoe": _summary(6.0, 0.3), "softmax": _summary(7.0, 0.9), "sfcn": _summary(6.5), "pca": _summary(8)}
    out = compare_to_reference(summary, "ermoe")
    assert out["best_other"] == "sfcn" and out["best_other_mae"] == 6.5
    assert out["improvement"] == pytest.approx(0.5 / 6.5)
    assert out["load_cv_vs_softmax"] == {"reference": 0.3, "softmax": 0.9}
    assert compare_to_reference(summary, "missing") == {}


def test_config_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "config.json"
    path.write_text(json.dumps({"data": {"inputs": ["../data/ages.csv"], "ages": "t.csv"}, "methods": []}))
    config = load_pipeline_config(path)
    assert config["data"]["inputs"] == [str((tmp_path / "data" / "ages.csv").resolve())]
    assert config["data"]["ages"] == str((tmp_path / "cfg" / "t.csv").resolve())


def test_shipped_pipeline_config_builds_every_method():
    from pathlib import Path

    from ermoe_ba.training.methods import ClassicalMethod, DeepMethod, method_from_dict

    config = json.loads(
        (Path(__file__).resolve().parents[2] / "pipelines" / "brain_age_cv" / "config.json").read_text()
    )
    methods = [method_from_dict(m) for m in config["methods"]]
    names = ["ermoe", "ermoe_disjoint", "ermoe_context", "ermoe_whitened"]
    names += ["softmax", "softmax_lbl", "dense", "sfcn", "pca_ridge"]
    assert [m.name for m in methods] == names
    deep = [m for m in methods if isinstance(m, DeepMethod)]
    assert [m.model_overrides.get("router") for m in deep] == [
        "ermoe",
        "ermoe",
        "ermoe",
        "ermoe",
        "softmax",
        "softmax+lbl",
        "dense",
        None,
    ]
    trunks = [m for m in deep if m.model_name == "ermoe_ba_tiny"]
    assert len({m.model_overrides.get("input_pool") for m in trunks}) == 1  # one trunk for every router
    assert len({(m.seeds, m.train.epochs, m.train.ema_decay) for m in deep}) == 1  # one recipe
    assert isinstance(methods[-1], ClassicalMethod) and methods[-1].factor == 3
