"""Fixtures for CLI tests: a small untrained checkpoint with known target statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ermoe_ba.models import create_model
from ermoe_ba.training.checkpoint import build_meta, save_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model with known target statistics and bias correction."""
    torch.manual_seed(0)
    model = create_model("ermoe_ba_tiny", embed_dim=32, depth=2, num_heads=2)
    meta = build_meta(
        model,
        "ermoe_ba_tiny",
        model_overrides={"embed_dim": 32, "depth": 2, "num_heads": 2},
        target={"mean": 50.0, "std": 15.0},
        bias_correction={"slope": 0.5, "intercept": 25.0, "n": 10, "fitted_on": "test"},
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model, meta)


@pytest.fixture(scope="session")
def dense_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model without experts (router "dense"): nothing routed to save or map."""
    overrides = {"embed_dim": 32, "depth": 2, "num_heads": 2, "router": "dense"}
    model = create_model("ermoe_ba_tiny", **overrides)
    meta = build_meta(model, "ermoe_ba_tiny", model_overrides=overrides, target={"mean": 50.0, "std": 15.0})
    return save_checkpoint(tmp_path_factory.mktemp("dense") / "dense.safetensors", model, meta)
