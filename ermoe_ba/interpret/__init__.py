"""Interpretability: expert maps in MNI and native space, atlas-region tables, figures, report.

The only part of the package that imports nilearn plotting (in :mod:`ermoe_ba.interpret.figures`,
inside the functions). Entry point for the CLI: :func:`build_maps`.
"""

from __future__ import annotations

from ermoe_ba.interpret.atlases import Atlas, atlas_manifest, list_atlases, load_atlas, read_label_table
from ermoe_ba.interpret.build import DEFAULT_ATLASES, MapsResult, build_maps
from ermoe_ba.interpret.cohort import (
    cohort_fraction_img,
    expert_fraction,
    modal_expert_img,
    split_trace,
    write_cohort_maps,
)
from ermoe_ba.interpret.maps import expert_label_img, expert_weights_img, top1_weight_img, write_subject_maps
from ermoe_ba.interpret.native import check_transform, to_native
from ermoe_ba.interpret.regions import age_trends, nmi_from_counts, region_counts, region_nmi, region_table
from ermoe_ba.interpret.report import load_metrics_table, top_regions, write_report
from ermoe_ba.interpret.tokens import EXPERT_LABEL_OFFSET, model_grid_affine, patch_voxels, tokens_to_grid

__all__ = [
    "DEFAULT_ATLASES",
    "EXPERT_LABEL_OFFSET",
    "Atlas",
    "MapsResult",
    "age_trends",
    "atlas_manifest",
    "build_maps",
    "check_transform",
    "cohort_fraction_img",
    "expert_fraction",
    "expert_label_img",
    "expert_weights_img",
    "list_atlases",
    "load_atlas",
    "load_metrics_table",
    "modal_expert_img",
    "model_grid_affine",
    "nmi_from_counts",
    "patch_voxels",
    "read_label_table",
    "region_counts",
    "region_nmi",
    "region_table",
    "split_trace",
    "to_native",
    "tokens_to_grid",
    "top1_weight_img",
    "top_regions",
    "write_cohort_maps",
    "write_report",
    "write_subject_maps",
]
