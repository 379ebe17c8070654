"""DDP: two CPU processes on gloo keep identical parameters while training on different shards."""

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
