"""A killed training continued from its state file ends exactly where an uninterrupted one ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ermoe_ba.training.loop as loop
import ermoe_ba.training.resume as resume
from ermoe_ba.models import create_model
from ermoe_ba.models.config import PreprocessConfig
from ermoe_ba.training.augment import AugmentConfig, BatchAugment
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.data import VolumeSet
from ermoe_ba.training.run import train_brain_age

GRID = PreprocessConfig(grid_shape=(32, 32, 32), grid_origin=(-32.0, -32.0, -32.0))  # as in conftest
# every random stream in play: dropout and stochastic depth (torch), shifts, gamma and noise (augmentation),
# mixup partners and weights (numpy)
RECIPE = dict(epochs=4, batch_size=4, lr=3e-3, warmup_epochs=1, patience=0, keep="best", ema_decay=0.9,
              augment=AugmentConfig(shift=2, gamma_prob=0.5, noise_prob=0.5), mixup_alpha=0.4, mixup_bandwidth=0.5,
              progress=False, device="cpu")  # fmt: skip


def small_ermoe(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(
        "ermoe_ba_tiny", preprocess=GRID, patch_size=8, embed_dim=32, num_heads=2, stem="linear",
        score="whitened", drop_rate=0.1, drop_path_rate=0.2,
    )  # fmt: skip


class Killed(Exception):
    """Stands for the process being killed right after the state of an epoch was written."""


def kill_after(saves: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real = loop.save_training_state
    calls = []

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == saves:
            raise Killed

    monkeypatch.setattr(loop, "save_training_state", save_then_die)


def _untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The history without the epochs' wall times (which no two runs share)."""
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def test_a_killed_run_continued_from_its_state_ends_with_the_uninterrupted_weights(synthetic, tmp_path, monkeypatch):
    data = (synthetic.volumes[:16], synthetic.ages[:16], synthetic.volumes[16:], synthetic.ages[16:])
    cfg = TrainConfig(**RECIPE)
    straight = small_ermoe(0)
    expected = loop.fit(straight, *data, cfg)

    state = tmp_path / "state.pt"
    kill_after(2, monkeypatch)
    with pytest.raises(Killed):
        loop.fit(small_ermoe(0), *data, cfg, state_path=state)
    monkeypatch.undo()
    continued = small_ermoe(7)  # other initial weights: everything must come from the state file
    result = loop.fit(continued, *data, cfg, state_path=state)

    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3]
    assert _untimed(result.history) == _untimed(expected.history)  # same losses, learning rates and validation errors
    assert all(record["seconds"] > 0 for record in result.history)
    assert result.best_epoch == expected.best_epoch
    for (name, a), (_, b) in zip(straight.state_dict().items(), continued.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_a_state_of_another_recipe_or_model_is_refused(synthetic, tmp_path):
    data = (synthetic.volumes[:8], synthetic.ages[:8])
    state = tmp_path / "state.pt"
    loop.fit(small_ermoe(0), *data, config=TrainConfig(**{**RECIPE, "epochs": 1}), state_path=state)
    with pytest.raises(ValueError, match=r"another recipe \(epochs: 1 there, 2 now"):
        loop.fit(small_ermoe(0), *data, config=TrainConfig(**{**RECIPE, "epochs": 2}), state_path=state)
    torch.manual_seed(0)
    other = create_model("ermoe_ba_tiny", preprocess=GRID, patch_size=8, embed_dim=16, num_heads=2, stem="linear")
    with pytest.raises(ValueError, match=r"another model \(.*embed_dim: 32 there, 16 now"):
        loop.fit(other, *data, config=TrainConfig(**{**RECIPE, "epochs": 1}), state_path=state)
    state.write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a readable training state"):
        loop.fit(small_ermoe(0), *data, config=TrainConfig(**{**RECIPE, "epochs": 1}), state_path=state)


def test_a_state_written_before_an_option_existed_reads_it_as_its_default(synthetic, tmp_path):
    data = (synthetic.volumes[:8], synthetic.ages[:8])
    state_path = tmp_path / "state.pt"
    plain = TrainConfig(**{**RECIPE, "epochs": 1, "mixup_alpha": 0.0, "mixup_bandwidth": 0.0})
    loop.fit(small_ermoe(0), *data, config=plain, state_path=state_path)
    state = torch.load(state_path, weights_only=True)
    for key in ("mixup_alpha", "mixup_bandwidth"):  # as an older version wrote it
        del state["recipe"][key]
    del state["recipe"]["augment"]["subvoxel_prob"]
    torch.save(state, state_path)
    assert resume.load_training_state(state_path, plain, small_ermoe(0))["next_epoch"] == 1
    with pytest.raises(ValueError, match=r"another recipe \(mixup_alpha: 0.0 there, 0.4 now"):
        resume.load_training_state(state_path, TrainConfig(**{**RECIPE, "epochs": 1}), small_ermoe(0))


def test_monai_augmentation_streams_continue_after_a_reload():
    config = AugmentConfig(kind="monai", shift=2, affine_prob=1.0, gamma_prob=1.0, noise_prob=1.0)
    batch = torch.randn(2, 1, 16, 16, 16)
    first = BatchAugment(config, seed=3)
    first(batch)
    saved = first.state_dict()
    expected = first(batch)
    second = BatchAugment(config, seed=99)
    second.load_state_dict(saved)
    torch.testing.assert_close(second(batch), expected, rtol=0, atol=0)


def test_an_ensemble_killed_in_its_second_member_resumes_it_and_keeps_the_first(synthetic, tmp_path, monkeypatch):
    data = VolumeSet(synthetic.volumes, synthetic.ages, synthetic.subject_ids, GRID, source="synthetic")
    overrides = dict(patch_size=8, embed_dim=32, num_heads=2, stem="linear")
    cfg = TrainConfig(**{**RECIPE, "epochs": 2})
    expected = train_brain_age(data, tmp_path / "a.safetensors", "ermoe_ba_tiny", overrides, cfg, seeds=2)

    state_dir = tmp_path / "b.safetensors.train-state"
    kill_after(3, monkeypatch)  # member 0 finished (2 epochs), member 1 killed after its first epoch
    with pytest.raises(Killed):
        train_brain_age(data, tmp_path / "b.safetensors", "ermoe_ba_tiny", overrides, cfg, seeds=2, state_dir=state_dir)
    assert sorted(p.name for p in state_dir.iterdir()) == ["member0.pt", "member1.pt"]
    monkeypatch.undo()
    saved_epochs = []
    real_save = loop.save_training_state
    monkeypatch.setattr(
        loop,
        "save_training_state",
        lambda path, state, *rest: saved_epochs.append(state["next_epoch"]) or real_save(path, state, *rest),
    )
    result = train_brain_age(
        data, tmp_path / "b.safetensors", "ermoe_ba_tiny", overrides, cfg, seeds=2, state_dir=state_dir
    )
    assert saved_epochs == [2]  # only member 1's last epoch was trained again
    assert not state_dir.exists()  # removed once the checkpoint was written
    np.testing.assert_array_equal(result.val_metrics["mae"], expected.val_metrics["mae"])
    for (name, a), (_, b) in zip(expected.model.state_dict().items(), result.model.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
