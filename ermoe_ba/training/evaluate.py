"""Evaluate a checkpoint on scans with known ages: metrics JSON, predictions table, scatter plot.

The bias correction applied here is the one stored in the checkpoint (fitted on the training
run's validation scans), never refitted on the evaluation scans.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ermoe_ba.atomic import atomic_path, write_json_atomic
from ermoe_ba.models.config import check_choice
from ermoe_ba.training.bias import AgeBiasCorrection
from ermoe_ba.training.checkpoint import load_checkpoint
from ermoe_ba.training.data import VolumeSet
from ermoe_ba.training.distributed import resolve_device
from ermoe_ba.training.loop import TargetScaler, predict
from ermoe_ba.training.metrics import brain_age_metrics
from ermoe_ba.training.shift_average import checkpoint_shift_average, named_offsets

__all__ = ["evaluate_checkpoint", "scatter_plot"]


def scatter_plot(
    age: ArrayLike,
    predicted: ArrayLike,
    output_file: str | Path,
    corrected: ArrayLike | None = None,
    title: str = "Predicted vs chronological age",
) -> Path:
    """Write a predicted-versus-true age scatter (identity line, MAE and r in the legend) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ermoe_ba.training.metrics import regression_metrics

    age, predicted = np.asarray(age, float), np.asarray(predicted, float)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    m = regression_metrics(age, predicted)
    ax.scatter(age, predicted, s=14, alpha=0.8, label=f"raw: MAE {m['mae']:.2f} y, r {m['r']:.3f}")
    if corrected is not None:
        mc = regression_metrics(age, corrected)
        ax.scatter(
            age,
            corrected,
            s=14,
            alpha=0.6,
            marker="x",
            label=f"bias-corrected: MAE {mc['mae']:.2f} y, r {mc['r']:.3f}",
        )
    lo = float(min(age.min(), predicted.min())) - 5
    hi = float(max(age.max(), predicted.max())) + 5
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, ls="--", label="identity")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="chronological age (y)", ylabel="predicted age (y)", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    output_file = atomic_path(output_file, fig.savefig)
    plt.close(fig)
    return output_file


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: VolumeSet,
    out_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 8,
    shift_average: str | None = None,
) -> dict[str, Any]:
    """Predict ``data`` with a checkpoint and score it against the known ages.

    ``shift_average`` names the whole-voxel shifts each prediction is averaged over
    (:data:`~ermoe_ba.training.shift_average.OFFSET_SETS`); None takes the checkpoint's own
    (:func:`~ermoe_ba.training.shift_average.checkpoint_shift_average`), as ``ermoe-ba predict`` does.

    ``device`` is ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``. Writes ``metrics.json``,
    ``predictions.csv`` and ``scatter.png`` to ``out_dir`` when given, each atomically.

    Returns
    -------
    dict
        :func:`~ermoe_ba.training.metrics.brain_age_metrics` (raw and ``corrected``), plus the
        checkpoint path and model name.
    """
    data = data.with_age()
    if len(data) < 2:
        raise ValueError(f"evaluation needs >= 2 scans with an age, got {len(data)}")
    device = resolve_device(check_choice("device", device, ("auto", "cpu", "cuda")))
    model, meta = load_checkpoint(checkpoint, map_location=device)
    if tuple(meta["preprocess"]["grid_shape"]) != tuple(data.preprocess.grid_shape):
        raise ValueError(
            f"{checkpoint} expects grid {meta['preprocess']['grid_shape']} but the scans were conformed to "
            f"{data.preprocess.grid_shape}; conform them with the checkpoint's PreprocessConfig"
        )
    scaler = TargetScaler(**meta["target"])
    correction = AgeBiasCorrection.from_dict(meta.get("bias_correction"))
    shift_average = checkpoint_shift_average(meta) if shift_average is None else shift_average
    offsets = named_offsets(shift_average)
    pred, _ = predict(model, data.volumes, scaler, batch_size, device, offsets=offsets)
    corrected = correction.apply(pred)
    metrics: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "model_name": meta["model_name"],
        "bias_correction": correction.to_dict(),
        "shift_average": shift_average,
        **brain_age_metrics(data.ages, pred, corrected),
    }
    if out_dir is not None:
        import pandas as pd

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "metrics.json", metrics)
        table = pd.DataFrame(
            {
                "subject_id": data.subject_ids,
                "age": data.ages,
                "predicted_age": pred,
                "corrected_age": corrected,
                "brain_age_gap": pred - data.ages,
                "corrected_gap": corrected - data.ages,
            }
        )
        atomic_path(out / "predictions.csv", lambda tmp: table.to_csv(tmp, index=False))
        scatter_plot(data.ages, pred, out / "scatter.png", corrected=corrected, title=meta["model_name"])
    return metrics
