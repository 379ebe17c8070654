"""The fit loop: schedule, weight-decay groups, learning on synthetic and real scans."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import ermoe_ba.models.sfcn  # noqa: F401
from ermoe_ba.models import create_model
from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.training.augment import AugmentConfig
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.loop import TargetScaler, fit, lr_lambda, param_groups, predict

GRID = PreprocessConfig(grid_shape=(32, 32, 32), grid_origin=(-32.0, -32.0, -32.0))  # as in conftest


QUIET = dict(progress=False, device="cpu", num_threads=1)  # 2 threads on a busy 2-core machine thrash


def small_sfcn() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("sfcn_tiny", preprocess=GRID, channels=(4, 8, 16), drop_rate=0.0)


def test_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_lambda(s, 10, 100, 0.05) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(f[10:]))  # non-increasing after warm-up
    assert f[100] == pytest.approx(0.05) and f[55] == pytest.approx(0.05 + 0.95 * 0.5)


def test_no_weight_decay_on_biases_norms_and_position_embeddings():
    model = create_model("ermoe_ba_tiny", preprocess=GRID, patch_size=8, embed_dim=32, num_heads=2)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(names[id(p)] == "pos_embed" for p in no_decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_target_scaler_uses_training_statistics():
    s = TargetScaler.fit(np.array([20.0, 40.0, 60.0]))
    assert s.mean == 40.0 and s.std == pytest.approx(np.std([20, 40, 60]))


def test_fit_learns_synthetic_ages_and_keeps_the_best_epoch(synthetic):
    tr, va = np.arange(0, 24, 3), np.arange(1, 24, 3)
    tr = np.setdiff1d(np.arange(24), va)
    cfg = TrainConfig(
        epochs=12,
        batch_size=4,
        lr=3e-3,
        warmup_epochs=1,
        patience=0,
        augment=AugmentConfig(kind="none"),
        **QUIET,
    )
    model = small_sfcn()
    result = fit(model, synthetic.volumes[tr], synthetic.ages[tr], synthetic.volumes[va], synthetic.ages[va], cfg)
    losses = [h["train_loss"] for h in result.history]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2])
    best = min(h["val_mae"] for h in result.history)
    assert result.best_val_mae == pytest.approx(best)
    pred, trace = predict(model, synthetic.volumes[va], result.scaler)
    assert trace is None  # a CNN has no routing
    assert np.abs(pred - synthetic.ages[va]).mean() == pytest.approx(best, rel=1e-4)


def test_soft_label_loss_learns_synthetic_ages_through_the_binned_head(synthetic):
    va = np.arange(1, 24, 3)
    tr = np.setdiff1d(np.arange(24), va)
    cfg = TrainConfig(
        epochs=12, batch_size=4, lr=1e-2, warmup_epochs=1, patience=0, loss="kl_bins",
        augment=AugmentConfig(kind="none"), **QUIET,
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model("sfcn_tiny", preprocess=GRID, channels=(4, 8, 16), drop_rate=0.0, output_bins=20)
    result = fit(model, synthetic.volumes[tr], synthetic.ages[tr], synthetic.volumes[va], synthetic.ages[va], cfg)
    losses = [h["train_loss"] for h in result.history]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2])
    pred, _ = predict(model, synthetic.volumes[va], result.scaler)  # column 0: the distribution's mean
    guess_the_mean = np.abs(synthetic.ages[va] - synthetic.ages[tr].mean()).mean()
    assert np.abs(pred - synthetic.ages[va]).mean() < 0.5 * guess_the_mean


def test_kl_loss_needs_a_binned_head():
    with pytest.raises(ValueError, match="output_bins > 0"):
        fit(small_sfcn(), torch.zeros(4, 1, 32, 32, 32), np.arange(4.0), config=TrainConfig(loss="kl_bins", **QUIET))


def test_early_stopping_stops_after_patience(synthetic):
    cfg = TrainConfig(
        epochs=50,
        batch_size=8,
        lr=0.0,
        warmup_epochs=0,
        patience=3,
        augment=AugmentConfig(kind="none"),
        **QUIET,
    )
    result = fit(
        small_sfcn(),
        synthetic.volumes[:16],
        synthetic.ages[:16],
        synthetic.volumes[16:],
        synthetic.ages[16:],
        cfg,
    )
    assert len(result.history) == 4 and result.best_epoch == 0  # lr 0: no epoch improves on the first


def test_keep_last_returns_the_last_epoch_whatever_validation_says(synthetic):
    tr, va = np.setdiff1d(np.arange(24), np.arange(1, 24, 3)), np.arange(1, 24, 3)
    cfg = TrainConfig(epochs=8, batch_size=4, lr=3e-3, warmup_epochs=1, patience=0, augment=AugmentConfig(kind="none"))
    results = {}
    for keep in ("best", "last"):
        model = small_sfcn()  # same seed and data: both runs follow the same trajectory
        config = TrainConfig(**{**cfg.to_dict(), "keep": keep, **QUIET})
        val_volumes, val_ages = synthetic.volumes[va], synthetic.ages[va]
        result = fit(model, synthetic.volumes[tr], synthetic.ages[tr], val_volumes, val_ages, config)
        pred, _ = predict(model, val_volumes, result.scaler)
        results[keep] = (result, np.abs(pred - synthetic.ages[va]).mean())
    (best, best_mae), (last, last_mae) = results["best"], results["last"]
    assert [h["val_mae"] for h in best.history] == pytest.approx([h["val_mae"] for h in last.history])
    assert last.best_epoch == 7 and last_mae == pytest.approx(last.history[-1]["val_mae"], rel=1e-4)
    assert best_mae == pytest.approx(min(h["val_mae"] for h in best.history), rel=1e-4)
    with pytest.raises(ValueError, match="keep"):
        TrainConfig(keep="median")
    assert TrainConfig(keep="last", patience=20).patience == 0  # keeping the last epoch never stops early


@pytest.mark.slow
def test_tiny_run_on_real_scans_lowers_the_training_loss(real_scans):
    torch.manual_seed(0)
    model = create_model("ermoe_ba_tiny")
    cfg = TrainConfig(
        epochs=25,
        batch_size=4,
        lr=2e-3,
        warmup_epochs=2,
        patience=0,
        augment=AugmentConfig(kind="none"),
        **QUIET,
    )
    scaler = TargetScaler.fit(real_scans.ages)
    before = np.abs(predict(model, real_scans.volumes, scaler)[0] - real_scans.ages).mean()
    fit(model, real_scans.volumes, real_scans.ages, config=cfg)
    after = np.abs(predict(model, real_scans.volumes, scaler)[0] - real_scans.ages).mean()
    assert after < 0.5 * before


def test_ema_result_is_the_exponential_average_of_the_steps(synthetic):
    vol, age = synthetic.volumes[:8], synthetic.ages[:8]

    def run(epochs: int, ema: float) -> torch.Tensor:
        cfg = TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, warmup_epochs=0, patience=0, ema_decay=ema,
                          augment=AugmentConfig(kind="none"), **QUIET)  # fmt: skip
        model = small_sfcn()
        fit(model, vol, age, config=cfg)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first, second = run(1, 0.0), run(2, 0.0)  # parameters after step 1 and step 2
    assert not torch.allclose(first, second)
    torch.testing.assert_close(run(2, 0.75), 0.75 * first + 0.25 * second)


def test_eigen_bases_stay_orthonormal_through_training(synthetic):
    torch.manual_seed(0)
    model = create_model("ermoe_ba_tiny", preprocess=GRID, patch_size=8, embed_dim=32, num_heads=2, stem="linear")
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0,
                      augment=AugmentConfig(kind="none"), **QUIET)  # fmt: skip
    fit(model, synthetic.volumes[:16], synthetic.ages[:16], config=cfg)
    bases = [p for n, p in model.named_parameters() if n.endswith((".V", ".U"))]
    assert bases
    for b in bases:
        gram = b.detach().mT @ b.detach()
        torch.testing.assert_close(gram, torch.eye(gram.shape[-1]).expand_as(gram), atol=1e-4, rtol=0)


def test_batchnorm_model_trains_when_one_scan_would_be_left_over():
    """9 scans in batches of 4 would leave a batch of one, which BatchNorm cannot train on."""
    torch.manual_seed(0)
    pre = PreprocessConfig(voxel_size=4.0, grid_shape=(64, 64, 64))
    model = create_model("sfcn_tiny", preprocess=pre)
    volumes = torch.randn(9, 1, 64, 64, 64)
    ages = np.linspace(20, 80, 9)
    cfg = TrainConfig(
        epochs=2, batch_size=4, warmup_epochs=0, patience=0, device="cpu", progress=False, eval_batch_size=8
    )
    result = fit(model, volumes, ages, volumes, ages, cfg)
    assert len(result.history) == 2
