"""``ermoe-ba train``: train a brain-age model on conformed scans with known ages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from ermoe_ba.cli.main import PANEL_TRAIN, WORKERS_HELP, app, usage_errors, writable_file

__all__ = ["parse_overrides", "train"]


def parse_overrides(items: list[str]) -> dict:
    """``["embed_dim=128", "patch_size=[8,8,8]"]`` -> ``{"embed_dim": 128, "patch_size": [8, 8, 8]}``.

    Values are parsed as JSON when possible, else kept as strings.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def parse_members(items: list[str]) -> list[dict] | None:
    """``['{}', '{"stem": "conv_pool"}']`` -> one override dict per ensemble member (None without any)."""
    if not items:
        return None
    out = []
    for item in items:
        try:
            member = json.loads(item)
        except json.JSONDecodeError as err:
            raise ValueError(f"--member {item!r} is not a JSON object ({err.msg})") from None
        if not isinstance(member, dict):
            raise ValueError(f"--member {item!r} is not a JSON object of ModelConfig overrides")
        out.append(member)
    return out


@app.command(rich_help_panel=PANEL_TRAIN)
def train(
    inputs: list[Path] = typer.Argument(
        ...,
        help="Scans with ages: a CSV/TSV table (path, subject_id, age), a BIDS dataset, folders or files.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (.safetensors or .pt)."),
    ages: Path | None = typer.Option(None, "--ages", help="Table of subject_id, age (overrides input ages)."),
    model: str = typer.Option(
        "ermoe_ba_tiny",
        "--model",
        "-m",
        help="Registered model name. 'voxel_ridge' fits PCA + ridge on 6 mm voxels on every scan (seconds; "
        "the epoch, optimiser and validation options do not apply), the linear member of the bundled hybrid.",
    ),
    router: str | None = typer.Option(
        None, "--router", help="ermoe, softmax, softmax+lbl or dense (default: the model's own)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="ModelConfig override KEY=VALUE (repeatable)."),
    epochs: int = typer.Option(60, "--epochs", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    loss: str = typer.Option(
        "l1",
        "--loss",
        help="l1 or mse on standardised age, or kl_bins: SFCN's soft-label loss over age bins, for a model "
        "with a binned head (--set output_bins=40).",
    ),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    patience: int = typer.Option(20, "--patience", min=0, help="Early-stopping patience in epochs (0: off)."),
    keep: str = typer.Option(
        "best",
        "--keep",
        help="Weights to keep: 'best' (best validation epoch, with early stopping) or 'last' (train all "
        "--epochs, early stopping off; validation only calibrates the bias correction; the bundled model's "
        "recipe is --keep last --epochs 150).",
    ),
    val_fraction: float = typer.Option(
        0.15,
        "--val-fraction",
        help="Subjects held out for early stopping and the bias correction (0: train on every scan; "
        "needs --keep last, and --calibration for a bias correction).",
    ),
    calibration: Path | None = typer.Option(
        None,
        "--calibration",
        help="CSV/TSV of held-out predictions (columns age, predicted_age: a CV run's <method>/out_of_fold.csv, "
        "or the test folds' predictions.csv of ermoe-ba evaluate) to fit the stored bias correction on, "
        "instead of the validation scans.",
    ),
    augment: str = typer.Option("fast", "--augment", help="fast, monai or none."),
    shift: int = typer.Option(
        4,
        "--shift",
        min=0,
        help="Largest random whole-voxel shift along each axis (4 voxels = ±8 mm on the 2 mm grid, the bundled "
        "recipe; 0: off).",
    ),
    blur_prob: float = typer.Option(
        0.0,
        "--blur-prob",
        min=0.0,
        max=1.0,
        help="Probability per scan and step of a random blur or sharpening (variance drawn from "
        "AugmentConfig.blur_variance, -0.25 to 0.5 voxel²), so that predictions depend less on a scan's "
        "sharpness; 0: off.",
    ),
    subvoxel_prob: float = typer.Option(
        0.0,
        "--subvoxel-prob",
        min=0.0,
        max=1.0,
        help="Probability per scan and step of a random shift by a fraction of a voxel (linear interpolation, "
        "the blur conform's resampling gives a scan); 0: off.",
    ),
    affine_prob: float = typer.Option(
        0.0,
        "--affine-prob",
        min=0.0,
        max=1.0,
        help="Probability per scan and step of a random rotation (up to 4° about each axis) and scaling (up to 4 %); "
        "0: off (on the IXI development set it made ERMoE-ba worse and left the CNN level: README, Results).",
    ),
    bias_prob: float = typer.Option(
        0.0, "--bias-prob", min=0.0, max=1.0, help="Probability of a smooth multiplicative bias field; 0: off."
    ),
    gamma_prob: float = typer.Option(
        0.0, "--gamma-prob", min=0.0, max=1.0, help="Probability of a gamma contrast change (0.8-1.25); 0: off."
    ),
    noise_prob: float = typer.Option(
        0.0,
        "--noise-prob",
        min=0.0,
        max=1.0,
        help="Probability of Gaussian noise inside the brain; 0: off. Bias field, gamma and noise change the "
        "grey/white contrast that carries age and hurt on the IXI development set (training.augment).",
    ),
    flip_lr: bool = typer.Option(
        False,
        "--flip-lr/--no-flip-lr",
        help="Mirror each scan left-right with probability 0.5 per step (off by default: ageing is asymmetric, "
        "and the expert maps of a model trained on mirrored brains cannot show a side).",
    ),
    ema_decay: float = typer.Option(0.99, "--ema-decay", help="Weight EMA decay per step (0: off)."),
    mixup_alpha: float = typer.Option(
        0.0,
        "--mixup-alpha",
        min=0.0,
        help="Mixup: blend each training scan and its age with a partner of the same batch, weight ~ "
        "Beta(alpha, alpha); 0: off.",
    ),
    mixup_bandwidth: float = typer.Option(
        0.0,
        "--mixup-bandwidth",
        min=0.0,
        help="Prefer mixup partners of similar age (C-Mixup): kernel width in standard deviations of the "
        "training ages; 0: uniform partners.",
    ),
    seeds: int = typer.Option(
        1, "--seeds", min=1, help="Train N models with different seeds; save their average as one ensemble."
    ),
    members: list[str] = typer.Option(
        [],
        "--member",
        help="One ensemble member's ModelConfig overrides as a JSON object, over --set (repeatable; one model "
        'per --member, e.g. --member \'{}\' --member \'{"stem": "conv_pool", "stem_width": 8}\' for two stems).',
    ),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", "-j", min=0, help=WORKERS_HELP),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Conformed-volume cache folder."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue a killed run of the same command from its training state (OUT.train-state/, "
        "rewritten after every epoch and removed once the checkpoint is written).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a brain-age model and write a self-describing checkpoint.

    Runs as one process or under ``torchrun --nproc-per-node N`` (DDP). Prints the validation
    metrics as one JSON line. Exit code 2 on usage errors. The training state is kept after every
    epoch, so ``--resume`` continues a killed run and ends with the checkpoint an uninterrupted
    run writes.
    """
    from ermoe_ba.models.config import PreprocessConfig
    from ermoe_ba.training.augment import AugmentConfig
    from ermoe_ba.training.bias import bias_correction_from_table
    from ermoe_ba.training.config import TrainConfig, member_model_overrides
    from ermoe_ba.training.data import load_cohort
    from ermoe_ba.training.distributed import (
        barrier,
        cleanup_distributed,
        init_distributed,
        is_main_process,
        resolve_device,
    )
    from ermoe_ba.training.run import check_validation_split, train_brain_age
    from ermoe_ba.training.voxel_ridge import train_voxel_ridge

    out = writable_file(out)  # before hours of training, not at the save
    with usage_errors():
        model_overrides = parse_overrides(overrides)
        if router is not None:
            model_overrides["router"] = router
        member_overrides = parse_members(members)
        augmentation = AugmentConfig(
            kind=augment, shift=shift, affine_prob=affine_prob, bias_prob=bias_prob, gamma_prob=gamma_prob,
            noise_prob=noise_prob, blur_prob=blur_prob, subvoxel_prob=subvoxel_prob, flip_lr=flip_lr,
        )  # fmt: skip
        config = TrainConfig(
            epochs=epochs, batch_size=batch_size, loss=loss, lr=lr, weight_decay=weight_decay, patience=patience,
            keep=keep, device=device, seed=seed, progress=progress, augment=augmentation, ema_decay=ema_decay,
            mixup_alpha=mixup_alpha, mixup_bandwidth=mixup_bandwidth, num_threads=threads,
        )  # fmt: skip
        for variant in member_model_overrides(model_overrides, member_overrides, seeds):
            _check_model(model, variant, loss)
        check_validation_split(val_fraction, keep)
        resolve_device(device)  # before the scans are conformed, not after
        correction = bias_correction_from_table(calibration) if calibration is not None else None
    init_distributed()
    state_dir = out.with_name(out.name + ".train-state")
    if not resume and is_main_process() and state_dir.exists():
        typer.echo(f"starting afresh: removing the earlier run's state {state_dir} (--resume continues it)", err=True)
        shutil.rmtree(state_dir)
    barrier()
    try:
        with usage_errors():
            data = load_cohort(inputs, ages, PreprocessConfig(), cache_dir, progress=progress, workers=workers)
            if model == "voxel_ridge":
                factor = int(model_overrides.get("input_pool", 3))
                path, meta, _ = train_voxel_ridge(
                    data, out if is_main_process() else None, factor=factor, seed=seed, bias_correction=correction
                )
                metrics = {"best_alpha": meta["train_config"]["best_alpha"]}
            else:
                result = train_brain_age(
                    data, out, model, model_overrides, config, val_fraction=val_fraction, seeds=seeds,
                    bias_correction=correction, member_overrides=member_overrides, state_dir=state_dir,
                )  # fmt: skip
                path, metrics = result.checkpoint, result.val_metrics
    finally:
        cleanup_distributed()
    if is_main_process():
        line = {"checkpoint": str(path), "n_scans": len(data), "skipped": len(data.skipped)}
        line.update({k: v for k, v in metrics.items() if k != "corrected"})
        typer.echo(json.dumps(line))


def _check_model(name: str, overrides: dict, loss: str) -> None:
    """Fail before any conforming when the model name or an override is wrong, or the loss cannot train it."""
    import ermoe_ba.models.sfcn  # noqa: F401  (registers the CNN peer)
    from ermoe_ba.models import create_model
    from ermoe_ba.training.loop import check_loss_fits_model

    try:
        built = create_model(name, **overrides)
    except TypeError as err:
        raise ValueError(f"bad model override for {name!r}: {err}") from None
    if name != "voxel_ridge":
        check_loss_fits_model(built, loss)
