"""torch.distributed helpers: works unchanged as one process or under ``torchrun`` (DDP).

Under ``torchrun`` every process gets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_distributed` then joins the process group (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_object",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "is_main_process",
    "rank",
    "resolve_device",
    "world_size",
]


def world_size() -> int:
    """Number of processes (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without an initialised process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Whether this process writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op for one process)."""
    if world_size() > 1:
        dist.barrier()


def all_gather_object(value: object) -> list[object]:
    """``value`` of every process, in rank order (``[value]`` for one process)."""
    if world_size() == 1:
        return [value]
    gathered: list[object] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> this process's CUDA device when available, else CPU.

    Raises
    ------
    ValueError
        For ``"cuda"`` on a machine without CUDA.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA device; use --device cpu or auto")
        if device == "cuda" and world_size() > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(device)


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Returns
    -------
    bool
        True when running distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return True
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)
    return True


def cleanup_distributed() -> None:
    """Leave the process group if one was joined.

    A ``DistributedDataParallel`` wrapper sits in reference cycles, so after training it lives on
    (holding the process group) until the garbage collector runs, possibly only while the
    interpreter shuts down: gloo's threads then die with the interpreter and the process aborts
    ("terminate called without an active exception"), now and then. Collecting first releases
    such wrappers while the group is alive.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
