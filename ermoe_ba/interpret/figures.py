"""Figures of expert maps over the MNI152 template, drawn with nilearn on matplotlib's Agg backend.

This is the only module of the package that imports ``nilearn.plotting``; it does so inside the
functions so that importing :mod:`ermoe_ba.interpret` stays light. Every function returns PNG
bytes (ready to embed in the HTML report) and writes them to ``output_file`` when given.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np

from ermoe_ba.interpret._io import write_bytes
from ermoe_ba.interpret.tokens import EXPERT_LABEL_OFFSET

__all__ = ["expert_colors", "expert_panel_title", "plot_expert_fractions", "plot_expert_glass", "plot_expert_labels"]

DPI = 90
Z_RANGE_MM = (-45.0, 70.0)
"""Axial slices are spread evenly over this MNI z range (cerebellum to vertex)."""


def _z_cuts(count: int) -> list[float]:
    return [float(z) for z in np.linspace(*Z_RANGE_MM, count)]


def _pyplot():
    matplotlib.use("Agg", force=False)  # headless: never open a window, even if a GUI is around
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, output_file: str | Path | None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor=fig.get_facecolor())
    _pyplot().close(fig)
    png = buf.getvalue()
    if output_file is not None:
        write_bytes(png, output_file)
    return png


def _background():
    from nilearn.datasets import load_mni152_template

    return load_mni152_template(resolution=2)


def _axial_slices(cut_coords: int, bg_img=None) -> dict:
    """nilearn keyword arguments shared by the axial-slice figures (dark template background)."""
    return {
        "bg_img": _background() if bg_img is None else bg_img,
        "display_mode": "z",
        "cut_coords": _z_cuts(cut_coords),
        "resampling_interpolation": "nearest",
        "black_bg": True,
        "draw_cross": False,
    }


def _masked(img: nib.Nifti1Image, mask: np.ndarray | None) -> nib.Nifti1Image:
    if mask is None:
        return img
    data = np.asanyarray(img.dataobj).copy()
    data[~np.asarray(mask, dtype=bool)] = 0
    return nib.Nifti1Image(data, img.affine)


def expert_colors(num_experts: int) -> list[tuple[float, float, float, float]]:
    """One distinct RGBA colour per expert (tab10 up to 10 experts, tab20 up to 20, then hsv)."""
    plt = _pyplot()
    if num_experts <= 10:
        cmap = plt.get_cmap("tab10")
    elif num_experts <= 20:
        cmap = plt.get_cmap("tab20")
    else:
        return [plt.get_cmap("hsv")(i / num_experts) for i in range(num_experts)]
    return [cmap(i) for i in range(num_experts)]


def plot_expert_labels(
    label_img: nib.Nifti1Image,
    num_experts: int,
    output_file: str | Path | None = None,
    *,
    mask: np.ndarray | None = None,
    title: str | None = None,
    cut_coords: int = 7,
) -> bytes:
    """Top-1 expert label map (``e + 1`` coded) as coloured regions on axial slices of the template.

    Parameters
    ----------
    label_img
        int label map in the model grid (subject top-1 or cohort modal expert).
    num_experts
        Sets the colour table and the legend.
    output_file
        PNG path to write (atomically), or None.
    mask
        Boolean model-grid array; voxels outside are not drawn (e.g. the template brain mask).
    title, cut_coords
        As in :func:`nilearn.plotting.plot_roi`; ``cut_coords`` is the number of axial slices.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from nilearn import plotting

    plt = _pyplot()
    colors = expert_colors(num_experts)
    fig = plt.figure(figsize=(12, 3.2), facecolor="black")
    ax = fig.add_axes((0.0, 0.0, 0.86, 0.9))
    plotting.plot_roi(
        _masked(label_img, mask),
        cmap=ListedColormap(colors),
        vmin=EXPERT_LABEL_OFFSET - 0.5,
        vmax=num_experts + EXPERT_LABEL_OFFSET - 0.5,
        alpha=0.75,
        axes=ax,
        figure=fig,
        colorbar=False,
        **_axial_slices(cut_coords),
    )
    handles = [Patch(color=c, label=f"expert {e}") for e, c in enumerate(colors)]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, labelcolor="white")
    if title:
        fig.suptitle(title, color="white", fontsize=11, y=0.99)
    return _finish(fig, output_file)


def _expert_volume(fraction_img: nib.Nifti1Image, expert: int, mask: np.ndarray | None) -> nib.Nifti1Image:
    data = np.asanyarray(fraction_img.dataobj)[..., expert].astype(np.float32)
    return _masked(nib.Nifti1Image(data, fraction_img.affine), mask)


def expert_panel_title(volume: nib.Nifti1Image, expert: int, threshold: float) -> str:
    """``"expert e"``, or ``"expert e: nowhere ≥ t"`` when no voxel of its map reaches the threshold.

    Such a panel is drawn empty (an expert that took no part of the brain, or too small a part
    for the threshold); the title says so instead of nilearn's bare "empty mask" warning.
    """
    data = np.asanyarray(volume.dataobj)
    reached = data.size and np.nanmax(np.abs(data)) >= threshold
    return f"expert {expert}" if reached else f"expert {expert}: nowhere ≥ {threshold:g}"


@contextlib.contextmanager
def _quiet_empty_mask() -> Iterator[None]:
    # nilearn warns "empty mask" for a map with nothing above the threshold; the panel title says it
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="empty mask", category=UserWarning)
        yield


def plot_expert_fractions(
    fraction_img: nib.Nifti1Image,
    output_file: str | Path | None = None,
    *,
    mask: np.ndarray | None = None,
    threshold: float = 0.05,
    title: str | None = None,
    cut_coords: int = 6,
) -> bytes:
    """One row of axial slices per expert: fraction of subjects (0..1) routed to it.

    ``fraction_img`` is a 4D ``(R, A, S, e)`` map (cohort fraction or subject gate weights).
    """
    from nilearn import plotting

    plt = _pyplot()
    num_experts = fraction_img.shape[3]
    bg = _background()
    fig, axes = plt.subplots(num_experts, 1, figsize=(11, 1.6 * num_experts + 0.4), facecolor="black")
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - 0.4 / (1.6 * num_experts + 0.4), hspace=0.05
    )
    for expert, ax in enumerate(np.atleast_1d(axes)):
        volume = _expert_volume(fraction_img, expert, mask)
        with _quiet_empty_mask():
            plotting.plot_stat_map(
                volume,
                threshold=threshold,
                vmin=0.0,
                vmax=1.0,
                cmap="plasma",
                colorbar=expert == 0,
                axes=ax,
                figure=fig,
                annotate=expert == 0,
                title=expert_panel_title(volume, expert, threshold),
                **_axial_slices(cut_coords, bg),
            )
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    return _finish(fig, output_file)


def plot_expert_glass(
    fraction_img: nib.Nifti1Image,
    output_file: str | Path | None = None,
    *,
    mask: np.ndarray | None = None,
    threshold: float = 0.5,
    title: str | None = None,
) -> bytes:
    """Glass-brain projections (sagittal, coronal, axial) of each expert's fraction map."""
    from nilearn import plotting

    plt = _pyplot()
    num_experts = fraction_img.shape[3]
    cols = 2
    rows = -(-num_experts // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.4 * rows + 0.4), facecolor="white")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.4 / (2.4 * rows + 0.4), wspace=0.02)
    axes = np.atleast_1d(axes).ravel()
    for expert in range(num_experts):
        volume = _expert_volume(fraction_img, expert, mask)
        with _quiet_empty_mask():
            plotting.plot_glass_brain(
                volume,
                display_mode="ortho",
                threshold=threshold,
                vmin=0.0,
                vmax=1.0,
                cmap="viridis",
                plot_abs=True,
                colorbar=False,
                axes=axes[expert],
                figure=fig,
                title=expert_panel_title(volume, expert, threshold),
                resampling_interpolation="nearest",
            )
    for ax in axes[num_experts:]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11)
    return _finish(fig, output_file)


def plot_weight_map(
    weight_img: nib.Nifti1Image,
    output_file: str | Path | None = None,
    *,
    mask: np.ndarray | None = None,
    title: str | None = None,
    cut_coords: int = 7,
) -> bytes:
    """A signed weight map (e.g. a linear member's years per unit intensity) on axial slices."""
    from nilearn import plotting

    plt = _pyplot()
    data = np.asanyarray(weight_img.dataobj)
    inside = data[mask] if mask is not None else data
    vmax = float(np.percentile(np.abs(inside), 99.5)) or 1.0
    fig = plt.figure(figsize=(12, 3.0), facecolor="black")
    plotting.plot_stat_map(
        _masked(weight_img, mask),
        cmap="cold_hot",
        vmax=vmax,
        symmetric_cbar=True,
        figure=fig,
        colorbar=True,
        title=title,
        **_axial_slices(cut_coords),
    )
    return _finish(fig, output_file)
