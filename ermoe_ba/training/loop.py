"""The fit loop: AdamW, warm-up + cosine schedule, L1 on standardised age, early stopping, DDP.

Works as one process (CPU or CUDA, bfloat16 autocast on CUDA) or under ``torchrun``: each
process then trains on its own shard of every epoch's permutation and DDP averages gradients.
Batches are sliced from the in-memory volume tensor, so there is no DataLoader.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ermoe_ba.layers.binned_head import soft_bin_kl_loss
from ermoe_ba.routing.trace import RoutingTrace
from ermoe_ba.training.augment import BatchAugment
from ermoe_ba.training.config import TrainConfig
from ermoe_ba.training.distributed import all_gather_object, is_main_process, rank, resolve_device, world_size
from ermoe_ba.training.mixup import LabelMixup
from ermoe_ba.training.resume import load_raw_tensors, load_training_state, raw_tensors, save_training_state
from ermoe_ba.training.shift_average import standardized_ages

__all__ = ["FitResult", "TargetScaler", "fit", "lr_lambda", "param_groups", "predict"]


@dataclass(frozen=True)
class TargetScaler:
    """Standardises ages with training-set statistics: ``z = (age - mean) / std``."""

    mean: float
    std: float

    @classmethod
    def fit(cls, ages: np.ndarray) -> TargetScaler:
        """Mean and standard deviation (ddof=0) of training ages."""
        a = np.asarray(ages, dtype=np.float64)
        if a.size < 2 or not np.isfinite(a).all():
            raise ValueError(f"target statistics need >= 2 finite training ages, got {a.size}")
        return cls(float(a.mean()), float(max(a.std(), 1e-6)))

    def to_dict(self) -> dict[str, float]:
        """For checkpoints."""
        return {"mean": self.mean, "std": self.std}


@dataclass
class FitResult:
    """Outcome of :func:`fit`; the model holds the weights of ``best_epoch``.

    ``best_epoch`` and ``best_val_mae`` describe the kept weights: the best validation epoch, or
    the last epoch with ``TrainConfig.keep="last"``. Each ``history`` record holds an epoch's mean
    ``train_loss`` and ``aux_loss``, its last ``lr``, ``val_mae`` when there is a validation set,
    and ``seconds``: the epoch's wall time (steps, BatchNorm re-estimation and validation).
    """

    model: nn.Module
    scaler: TargetScaler
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_mae: float = float("nan")
    seconds: float = 0.0


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine to ``min_ratio``.

    Examples
    --------
    >>> [round(lr_lambda(s, 2, 10, 0.0), 3) for s in (0, 1, 2, 10)]
    [0.5, 1.0, 1.0, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices and kernels only (not biases, norms, embeddings' offsets)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # eigen-expert bases are retracted to orthonormal by QR: their scale is meaningless, and
        # decaying it would only raise their effective learning rate
        scale_free = name.endswith((".V", ".U"))
        skip = scale_free or p.ndim <= 1 or any(k in name for k in ("pos_embed", "cls_token", "log_s", "norm"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(
    model: nn.Module,
    volumes: torch.Tensor,
    scaler: TargetScaler | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    capture_routing: bool = False,
    amp: bool = True,
    offsets: Sequence[tuple[int, int, int]] | None = None,
) -> tuple[np.ndarray, RoutingTrace | None]:
    """Predicted ages (de-standardised with ``scaler``) for ``(n, 1, R, A, S)`` volumes.

    With ``offsets`` (:func:`~ermoe_ba.training.shift_average.named_offsets`) each prediction is
    the mean over copies of the scan moved by those whole-voxel offsets
    (:func:`~ermoe_ba.training.shift_average.standardized_ages`); routing is that of the scan itself.
    Returns the ``(n,)`` predictions and, with ``capture_routing``, the routing trace of all
    scans (None for models without routing).
    """
    device = torch.device(device) if isinstance(device, str) else device
    was_training = model.training
    model.eval()
    preds, traces = [], []
    for start in range(0, volumes.shape[0], batch_size):
        x = volumes[start : start + batch_size].to(device, torch.float32)
        with _autocast(device, amp):
            standardized, routing = standardized_ages(model, x, offsets or [(0, 0, 0)], capture_routing)
        preds.append(standardized.cpu())
        if capture_routing and routing is not None:
            traces.append(routing.to("cpu"))
    model.train(was_training)
    pred = torch.cat(preds).double().numpy() if preds else np.zeros(0)
    if scaler is not None:
        pred = pred * scaler.std + scaler.mean
    return pred, (RoutingTrace.concat(traces) if traces else None)


@torch.no_grad()
def _recompute_bn(model: nn.Module, volumes: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Re-estimate BatchNorm running statistics on un-augmented training scans.

    Running averages with momentum over a few small, augmented batches swing the eval-mode
    output of a CNN by tens of years from one epoch to the next on ~100 scans; statistics
    computed for the current weights remove that noise from validation and the kept model.
    """
    from torch.optim.swa_utils import update_bn

    chunks = max(1, math.ceil(volumes.shape[0] / batch_size))  # near-equal sizes: never a batch of one
    batches = (chunk.float() for chunk in torch.tensor_split(volumes, chunks))
    was_training = model.training
    update_bn(batches, model, device=device)
    model.train(was_training)


def _loss(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "kl_bins":
        return soft_bin_kl_loss(output, target)
    on_age = torch.nn.functional.l1_loss if kind == "l1" else torch.nn.functional.mse_loss
    return on_age(output[:, 0].float(), target)


def check_loss_fits_model(model: nn.Module, kind: str) -> None:
    """Raise ValueError if the loss ``kind`` cannot train ``model`` (``kl_bins`` needs a binned head)."""
    bins = getattr(getattr(model, "config", None), "output_bins", 0)
    if kind == "kl_bins" and not bins:
        raise ValueError(
            "loss='kl_bins' needs a model with a binned head: build it with output_bins > 0 "
            "(e.g. ermoe-ba train --set output_bins=40)"
        )


def _check_ranks_resume_alike(state_path: str | Path, next_epoch: int) -> None:
    """Raise ValueError on every rank if the ranks' states would resume at different epochs.

    Each rank writes its own state after every epoch; a run killed between two ranks' writes
    leaves them an epoch apart (or one without a state), and resuming them would desynchronise
    the replicas (unequal step counts hang DDP's gradient averaging).
    """
    epochs = all_gather_object(next_epoch)
    if len(set(epochs)) > 1:
        shown = ", ".join(f"rank {r}: epoch {e}" for r, e in enumerate(epochs))
        raise ValueError(
            f"{state_path}: the processes' training states resume at different epochs ({shown}); "
            "delete this run's rank states and train again"
        )


def fit(
    model: nn.Module,
    train_volumes: torch.Tensor,
    train_ages: np.ndarray,
    val_volumes: torch.Tensor | None = None,
    val_ages: np.ndarray | None = None,
    config: TrainConfig | None = None,
    state_path: str | Path | None = None,
) -> FitResult:
    """Train ``model`` in place on ``(n, 1, R, A, S)`` volumes and ages; keep the best epoch.

    Parameters
    ----------
    model
        Any registered model (``forward(x) -> ModelOutput``).
    train_volumes, train_ages
        Training scans; ages in years (standardised internally).
    val_volumes, val_ages
        Validation scans for early stopping; without them the last epoch is kept.
    config
        The recipe; :class:`TrainConfig` defaults when None.
    state_path
        Keep the training state in this file, rewritten atomically after every epoch
        (:mod:`~ermoe_ba.training.resume`). If it exists, training continues from it and ends
        with the weights of an uninterrupted run; a state of another recipe or model raises
        ValueError. None keeps no state.

    Examples
    --------
    >>> from ermoe_ba.models import create_model  # doctest: +SKIP
    >>> result = fit(create_model("sfcn_tiny"), volumes, ages, config=TrainConfig(epochs=2))  # doctest: +SKIP
    """
    cfg = config or TrainConfig()
    check_loss_fits_model(model, cfg.loss)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    scaler = TargetScaler.fit(train_ages)
    targets = torch.as_tensor((np.asarray(train_ages) - scaler.mean) / scaler.std, dtype=torch.float32)
    model.to(device)
    net: nn.Module = model
    if world_size() > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    n_local = train_volumes.shape[0] // world_size()
    steps_per_epoch = max(1, math.ceil(n_local / cfg.batch_size))
    if n_local % cfg.batch_size == 1 and steps_per_epoch > 1:
        steps_per_epoch -= 1  # a batch of one scan breaks BatchNorm; that scan comes back next epoch
    total = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    warmup = min(total // 2, steps_per_epoch * cfg.warmup_epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, warmup, total, cfg.min_lr_ratio))
    augment = BatchAugment(cfg.augment, seed=cfg.seed + 1000 * rank())
    mixup = LabelMixup(cfg.mixup_alpha, cfg.mixup_bandwidth, seed=cfg.seed + 1000 * rank())
    result = FitResult(model, scaler)
    best_state, since_best, start = None, 0, time.perf_counter()
    retract = [m for m in model.modules() if hasattr(m, "orthonormalize_")]
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    scored = ema.module if ema is not None else model
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    first_epoch, stopped, earlier_seconds = 0, False, 0.0
    if state_path is not None and Path(state_path).is_file():
        state = load_training_state(state_path, cfg, model)
        try:
            load_raw_tensors(model, state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{state_path}: saved for another model ({str(err).splitlines()[0]})") from None
        schedule.load_state_dict(state["schedule"])
        if ema is not None:
            load_raw_tensors(ema, state["ema"])
        augment.load_state_dict(state["augment"])
        if mixup.enabled:
            mixup.load_state_dict(state["mixup"])
        result.history, result.best_epoch = state["history"], state["best_epoch"]
        result.best_val_mae = state["best_val_mae"]
        best_state, since_best = state["best_state"], state["since_best"]
        first_epoch, stopped, earlier_seconds = state["next_epoch"], state["stopped"], state["seconds"]
    if state_path is not None and world_size() > 1:
        _check_ranks_resume_alike(state_path, first_epoch)

    from tqdm.auto import tqdm

    epochs = range(first_epoch, first_epoch if stopped else cfg.epochs)
    show = cfg.progress and is_main_process()
    bar = tqdm(epochs, desc="train", unit="epoch", initial=first_epoch, total=cfg.epochs, disable=not show)
    for epoch in bar:
        epoch_start = time.perf_counter()
        net.train()
        order = torch.randperm(train_volumes.shape[0], generator=torch.Generator().manual_seed(cfg.seed + epoch))
        mine = order[rank() :: world_size()][:n_local]  # equal step counts on every process
        total_loss, total_aux, seen = 0.0, 0.0, 0
        for step in range(steps_per_epoch):
            idx = mine[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = augment(train_volumes[idx].float()).to(device)
            y = targets[idx].to(device)
            x, y = mixup(x, y)
            with _autocast(device, cfg.amp):
                out = net(x)
                loss = _loss(out.output, y, cfg.loss)
                objective = loss + out.aux_loss.float()
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            for module in retract:  # keep raw eigen bases orthonormal (well conditioned for QR)
                module.orthonormalize_()
            if ema is not None:
                ema.update_parameters(model)
            schedule.step()
            total_loss += float(loss.detach()) * len(idx)
            total_aux += float(out.aux_loss.detach()) * len(idx)
            seen += len(idx)
        record = {
            "epoch": epoch,
            "train_loss": total_loss / max(1, seen),
            "aux_loss": total_aux / max(1, seen),
            "lr": optimizer.param_groups[0]["lr"],
        }
        if has_bn:  # BatchNorm statistics of exactly the weights being scored (SWA practice)
            _recompute_bn(scored, train_volumes, cfg.eval_batch_size, device)
        if val_volumes is not None and val_ages is not None and len(val_ages):
            pred, _ = predict(scored, val_volumes, scaler, cfg.eval_batch_size, device, amp=cfg.amp)
            record["val_mae"] = float(np.abs(pred - np.asarray(val_ages)).mean())
            if not record["val_mae"] >= result.best_val_mae:  # also true while best is NaN
                result.best_val_mae, result.best_epoch, since_best = record["val_mae"], epoch, 0
                if cfg.keep == "best":
                    best_state = copy.deepcopy(scored.state_dict())
            else:
                since_best += 1
        record["seconds"] = time.perf_counter() - epoch_start
        result.history.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("train_loss", "val_mae")})
        stopped = bool(cfg.patience and since_best >= cfg.patience)
        if state_path is not None:
            state = {
                "next_epoch": epoch + 1, "stopped": stopped, "seconds": earlier_seconds + time.perf_counter() - start,
                "model": raw_tensors(model), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "ema": None if ema is None else raw_tensors(ema), "augment": augment.state_dict(),
                "mixup": mixup.state_dict(),
                "history": result.history, "best_epoch": result.best_epoch, "best_val_mae": result.best_val_mae,
                "best_state": best_state, "since_best": since_best,
            }  # fmt: skip
            save_training_state(state_path, state, cfg, model)
        if stopped:
            break
    if best_state is None:  # keep="last" or no validation: the last epoch (its weight average with EMA)
        result.best_epoch = len(result.history) - 1
        result.best_val_mae = result.history[-1].get("val_mae", float("nan"))
        best_state = ema.module.state_dict() if ema is not None else None
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = earlier_seconds + time.perf_counter() - start
    return result
