"""The training recipe, one dataclass shared by ``ermoe-ba train``, the CV benchmark and tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ermoe_ba.models.config import check_choice
from ermoe_ba.training.augment import AugmentConfig

__all__ = ["LOSSES", "TrainConfig", "member_configs", "member_model_overrides"]

LOSSES = ("l1", "mse", "kl_bins")


@dataclass
class TrainConfig:
    """How a brain-age model is trained.

    The defaults are not the bundled recipe (``pipelines/brain_age_cv/config.json``; ``ermoe-ba
    train --epochs 150 --keep last`` in the README): an option added later defaults to the
    behaviour from before it existed (e.g. ``ema_decay=0``), so that results files written before
    the option keep their meaning (:func:`~ermoe_ba.training.methods.settings_defaults`).

    Parameters
    ----------
    epochs
        Maximum number of passes over the training scans.
    batch_size
        Scans per optimiser step (per process under DDP).
    lr, weight_decay
        AdamW peak learning rate and decoupled weight decay (not applied to biases, norms,
        position embeddings or 1D parameters).
    warmup_epochs, min_lr_ratio
        Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at the last epoch.
    patience
        Early stopping: stop after this many epochs without a better validation MAE (0 = off).
    keep
        Which weights training returns: ``"best"``, those of the epoch with the best validation
        MAE (early stopping's choice), or ``"last"``, those of the last epoch run, with the
        validation scans only monitored (on ~15 validation scans the best epoch is itself
        a noisy pick); ``"last"`` turns early stopping off (``patience`` is set to 0), since
        stopping early would keep an arbitrary epoch. Without validation scans the last epoch
        is kept either way.
    grad_clip
        Maximum gradient norm (0 = no clipping).
    mixup_alpha, mixup_bandwidth
        Mixup of the training batches (:class:`~ermoe_ba.training.mixup.LabelMixup`): each scan
        is blended with a partner of the same batch, its standardised age likewise, with weight
        ``λ ~ Beta(mixup_alpha, mixup_alpha)``; ``mixup_bandwidth`` > 0 prefers partners of
        similar age (C-Mixup; the kernel width in standard deviations of age). ``mixup_alpha=0``
        (default) turns it off. With mixup the history's ``train_loss`` is that of the blended
        batches.
    ema_decay
        Exponential moving average of the weights (and BatchNorm statistics) with this decay
        per step, used for validation and kept as the result; 0 turns it off. Averaging damps
        the step-to-step noise of training on ~100 scans.
    loss
        ``"l1"`` or ``"mse"`` on standardised age, or ``"kl_bins"``: SFCN's Kullback-Leibler
        divergence to a Gaussian soft label over the bins of a model built with
        ``output_bins > 0`` (:func:`~ermoe_ba.layers.binned_head.soft_bin_kl_loss`). The model's
        auxiliary loss is added.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    amp
        bfloat16 autocast on CUDA (ignored on CPU).
    seed
        Seeds weight initialisation, batch order and augmentation.
    num_threads
        torch CPU threads (None: leave torch's default).
    augment
        See :class:`~ermoe_ba.training.augment.AugmentConfig`.
    """

    epochs: int = 60
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    min_lr_ratio: float = 0.01
    patience: int = 20
    keep: str = "best"
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    mixup_alpha: float = 0.0
    mixup_bandwidth: float = 0.0
    loss: str = "l1"
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    num_threads: int | None = None
    eval_batch_size: int = 16
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LOSSES)
        check_choice("keep", self.keep, ("best", "last"))
        if self.keep == "last":
            self.patience = 0
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs={self.epochs} and batch_size={self.batch_size} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form stored in checkpoints and CV results."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def member_configs(config: TrainConfig, seeds: int) -> list[TrainConfig]:
    """The recipe of each member of a seed ensemble: ``config`` with seed ``config.seed + 1000 * j``.

    Member 0 is ``config`` itself, so a one-member ensemble is the plain training.
    """
    if seeds < 1:
        raise ValueError(f"seeds={seeds} must be >= 1")
    return [dataclasses.replace(config, seed=config.seed + 1000 * j) for j in range(seeds)]


def member_model_overrides(
    overrides: dict[str, Any], member_overrides: Sequence[dict[str, Any]] | None, seeds: int
) -> list[dict[str, Any]]:
    """The model overrides of each ensemble member: ``overrides`` updated by the member's own.

    Without ``member_overrides`` every one of ``seeds`` members gets ``overrides`` (a seed
    ensemble). With them there is one member per entry, e.g. ``[{}, {"stem": "conv_pool"}]``
    for two stems; ``seeds`` must then be 1 or their number.

    Examples
    --------
    >>> member_model_overrides({"router": "ermoe"}, [{}, {"stem": "conv_pool"}], 1)
    [{'router': 'ermoe'}, {'router': 'ermoe', 'stem': 'conv_pool'}]
    """
    if member_overrides is None:
        if seeds < 1:
            raise ValueError(f"seeds={seeds} must be >= 1")
        return [dict(overrides) for _ in range(seeds)]
    if len(member_overrides) < 1:
        raise ValueError("member_overrides needs at least one member (or None for a seed ensemble)")
    if seeds not in (1, len(member_overrides)):
        raise ValueError(
            f"seeds={seeds} disagrees with {len(member_overrides)} member_overrides: "
            "one member is trained per entry, so leave seeds at 1"
        )
    return [{**overrides, **member} for member in member_overrides]
