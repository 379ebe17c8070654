"""DDP: two CPU processes on gloo keep identical parameters while training on different shards,
and a killed DDP run resumes from its per-rank states."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import ermoe_ba.models.sfcn  # noqa: F401
    from ermoe_ba.models import create_model
    from ermoe_ba.models.config import PreprocessConfig
    from ermoe_ba.training.augment import AugmentConfig
    from ermoe_ba.training.config import TrainConfig
    from ermoe_ba.training.distributed import cleanup_distributed, init_distributed, world_size
    from ermoe_ba.training.loop import fit

    # A file rendezvous: a TCP port picked in the parent can be taken before the workers bind it.
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    assert init_distributed("gloo") and world_size() == world
    grid = PreprocessConfig(grid_shape=(16, 16, 16), grid_origin=(-16.0, -16.0, -16.0))
    torch.manual_seed(0)  # same initial weights on every rank
    model = create_model("ermoe_ba_tiny", preprocess=grid, patch_size=4, embed_dim=16, num_heads=2, depth=2)
    initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    gen = torch.Generator().manual_seed(1)
    volumes = torch.randn(12, 1, 16, 16, 16, generator=gen)
    ages = np.linspace(20, 80, 12)
    cfg = TrainConfig(
        epochs=2, batch_size=2, lr=1e-2, warmup_epochs=0, progress=False, seed=0, augment=AugmentConfig(shift=1)
    )  # ranks draw different augmentations
    fit(model, volumes, ages, config=cfg)
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(params) for _ in range(world)]
    dist.all_gather(gathered, params)
    if rank == 0:
        torch.save({"gathered": gathered, "initial": initial}, os.path.join(out_dir, "params.pt"))
    cleanup_distributed()


@pytest.mark.slow
def test_two_gloo_processes_stay_in_sync(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "params.pt", weights_only=True)
    a, b = out["gathered"]
    assert torch.equal(a, b)  # gradients were averaged: both replicas took identical steps
    assert not torch.allclose(a, out["initial"])  # and they did train


class _Killed(Exception):
    """Stands for the job being killed right after the ranks wrote an epoch's state."""


def _resume_worker(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    import ermoe_ba.training.loop as loop
    from ermoe_ba.models import create_model
    from ermoe_ba.models.config import PreprocessConfig
    from ermoe_ba.training.augment import AugmentConfig
    from ermoe_ba.training.config import TrainConfig
    from ermoe_ba.training.distributed import cleanup_distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    grid = PreprocessConfig(grid_shape=(16, 16, 16), grid_origin=(-16.0, -16.0, -16.0))

    def model(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return create_model("ermoe_ba_tiny", preprocess=grid, patch_size=4, embed_dim=16, num_heads=2, depth=2)

    volumes = torch.randn(12, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    ages = np.linspace(20, 80, 12)
    cfg = TrainConfig(
        epochs=3, batch_size=2, lr=1e-2, warmup_epochs=1, progress=False, seed=0, ema_decay=0.9,
        augment=AugmentConfig(shift=1, noise_prob=0.5),
    )  # fmt: skip
    straight = model(0)
    loop.fit(straight, volumes, ages, config=cfg)

    state = os.path.join(out_dir, f"member0.rank{rank}.pt")  # as train_brain_age names rank states
    real_save = loop.save_training_state

    def save_then_die_after(saves: int, write: bool = True):
        calls = []

        def save(*args, **kwargs):
            if write:
                real_save(*args, **kwargs)
            calls.append(1)
            if len(calls) == saves:
                raise _Killed

        return save

    loop.save_training_state = save_then_die_after(2)
    try:
        loop.fit(model(0), volumes, ages, config=cfg, state_path=state)
    except _Killed:
        pass
    loop.save_training_state = real_save
    continued = model(5)  # other initial weights: everything must come from the rank's state
    loop.fit(continued, volumes, ages, config=cfg, state_path=state)

    # killed between the ranks' writes: rank 0 has epoch 2's state, rank 1 none
    os.remove(state)
    loop.save_training_state = save_then_die_after(2, write=rank == 0)
    try:
        loop.fit(model(0), volumes, ages, config=cfg, state_path=state)
    except _Killed:
        pass
    loop.save_training_state = real_save
    refused = ""
    try:
        loop.fit(model(0), volumes, ages, config=cfg, state_path=state)
    except ValueError as err:
        refused = str(err)

    flat = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (straight, continued)]
    gathered = [[torch.zeros_like(f) for _ in range(world)] for f in flat]
    for out, f in zip(gathered, flat, strict=True):
        dist.all_gather(out, f)
    if rank == 0:
        torch.save({"straight": gathered[0], "continued": gathered[1]}, os.path.join(out_dir, "params.pt"))
    with open(os.path.join(out_dir, f"refused{rank}.txt"), "w") as handle:
        handle.write(refused)
    cleanup_distributed()


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_from_its_rank_states(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_resume_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "params.pt", weights_only=True)
    for straight, continued in zip(out["straight"], out["continued"], strict=True):
        assert torch.equal(continued, straight)  # bit-identical to the uninterrupted DDP run, on both ranks
    assert torch.equal(out["continued"][0], out["continued"][1])
    expected = "resume at different epochs (rank 0: epoch 2, rank 1: epoch 0)"
    for rank in range(2):
        assert expected in (tmp_path / f"refused{rank}.txt").read_text()  # every rank stops, none hangs
