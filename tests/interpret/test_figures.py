"""Expert figures: an expert whose map reaches nowhere the threshold is named as such, without a warning."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np

from ermoe_ba.interpret.figures import expert_panel_title, plot_expert_fractions, plot_expert_glass


def fractions_with_an_idle_expert() -> nib.Nifti1Image:
    """A 2 mm MNI-space map of three experts; expert 1 took no voxel."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-90.0, -126.0, -72.0)
    data = np.zeros((91, 109, 91, 3), dtype=np.float32)
    data[20:70, 20:90, 20:70, 0] = 0.8
    data[30:60, 40:80, 30:60, 2] = 0.3
    return nib.Nifti1Image(data, affine)


def test_panel_titles_name_the_experts_that_reach_no_voxel():
    img = fractions_with_an_idle_expert()
    volume = [nib.Nifti1Image(np.asanyarray(img.dataobj)[..., e], img.affine) for e in range(3)]
    assert expert_panel_title(volume[0], 0, 0.5) == "expert 0"
    assert expert_panel_title(volume[1], 1, 0.5) == "expert 1: nowhere ≥ 0.5"
    assert expert_panel_title(volume[2], 2, 0.5) == "expert 2: nowhere ≥ 0.5"
    assert expert_panel_title(volume[2], 2, 0.05) == "expert 2"


def test_figures_with_an_idle_expert_draw_without_nilearn_warnings():
    img = fractions_with_an_idle_expert()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nilearn's "empty mask" would raise here
        pngs = [plot_expert_fractions(img, cut_coords=3), plot_expert_glass(img)]
    assert all(png.startswith(b"\x89PNG") and len(png) > 10_000 for png in pngs)
