"""Region tables against hand counts, the planted-ventricle case, and age trends vs scipy."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import normalized_mutual_info_score

from ermoe_ba.interpret import (
    age_trends,
    expert_label_img,
    load_atlas,
    nmi_from_counts,
    patch_voxels,
    region_nmi,
    region_table,
)
from ermoe_ba.interpret.atlases import Atlas


@pytest.fixture
def small_case():
    """Two regions, three experts, 10 voxels in the atlas plus background and uncovered voxels.

    region 5 ("A", 6 voxels): experts 0, 0, 0, 1, 1, 2   region 9 ("B", 4 voxels): 1, 1, 1, 2
    """
    regions = np.array([5, 5, 5, 5, 5, 5, 9, 9, 9, 9, 0, 0, 5], dtype=np.int32).reshape(13, 1, 1)
    experts = np.array([0, 0, 0, 1, 1, 2, 1, 1, 1, 2, 0, 1, -1]).reshape(13, 1, 1)
    labels = (experts + 1).astype(np.int16)  # e + 1 coding; the last voxel has no token (0)
    atlas = Atlas(
        name="toy",
        img=nib.Nifti1Image(regions, np.eye(4)),
        labels=pd.DataFrame({"index": [9, 5], "name": ["B", "A"]}),  # unsorted on purpose
        licence="none",
    )
    return labels, atlas


def test_shares_enrichment_and_nmi_match_hand_computation(small_case):
    labels, atlas = small_case
    table = region_table(labels, atlas, 3).set_index(["region", "expert"])
    # counts: A = (3, 2, 1) of 6, B = (0, 3, 1) of 4; experts over the 10 in-atlas voxels: 3, 5, 2
    hand_share = {("A", 0): 3 / 6, ("A", 1): 2 / 6, ("A", 2): 1 / 6}
    hand_share |= {("B", 0): 0, ("B", 1): 3 / 4, ("B", 2): 1 / 4}
    expected = {0: 3 / 10, 1: 5 / 10, 2: 2 / 10}
    for (region, expert), share in hand_share.items():
        row = table.loc[(region, expert)]
        assert row["share"] == pytest.approx(share)
        assert row["expected_share"] == pytest.approx(expected[expert])
        assert row["enrichment"] == pytest.approx(share / expected[expert])
    assert table.loc[("A", 0), "enrichment"] == pytest.approx(5 / 3)
    assert table.loc[("A", 0), "voxels_region"] == 6 and table.loc[("B", 1), "voxels_routed"] == 3

    # NMI by hand: MI = sum p(r,e) log(p(r,e) / (p(r) p(e))), divided by the mean of the entropies
    joint = np.array([[3, 2, 1], [0, 3, 1]]) / 10
    pr, pe = joint.sum(1), joint.sum(0)
    cells = [(i, j) for i in range(2) for j in range(3) if joint[i, j]]
    mi = sum(joint[i, j] * math.log(joint[i, j] / (pr[i] * pe[j])) for i, j in cells)
    h_r = -sum(p * math.log(p) for p in pr)
    h_e = -sum(p * math.log(p) for p in pe)
    by_hand = mi / ((h_r + h_e) / 2)
    assert region_nmi(labels, atlas, 3) == pytest.approx(by_hand)
    r = np.array(["A"] * 6 + ["B"] * 4)
    e = np.array([0, 0, 0, 1, 1, 2, 1, 1, 1, 2])
    assert region_nmi(labels, atlas, 3) == pytest.approx(normalized_mutual_info_score(r, e))


def test_nmi_edge_cases_follow_sklearn():
    assert nmi_from_counts(np.array([[4]])) == 1.0
    assert nmi_from_counts(np.array([[2, 2], [2, 2]])) == 0.0  # independent
    assert nmi_from_counts(np.array([[3, 0], [0, 5]])) == pytest.approx(1.0)  # one-to-one


def test_pooled_subjects_equal_summed_counts(small_case):
    labels, atlas = small_case
    other = labels[::-1].copy()
    pooled = region_table([labels, other], atlas, 3)
    single = [region_table(m, atlas, 3) for m in (labels, other)]
    summed = single[0]["voxels_routed"] + single[1]["voxels_routed"]
    np.testing.assert_array_equal(pooled["voxels_routed"], summed)


def test_shares_sum_to_one_per_region_on_a_real_atlas(mni_config, make_trace):
    atlas = load_atlas("neuromorphometrics", mni_config)
    grid_size = (10, 12, 10)
    trace = make_trace(np.random.default_rng(3).integers(0, 6, size=(1, 1200)), 6, grid_size)
    table = region_table(expert_label_img(trace[1], grid_size, mni_config), atlas, 6)
    sums = table.groupby("region")["share"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    assert len(sums) >= 130
    # expected shares are the experts' overall shares: their share-weighted mean over regions
    weights = table.groupby("region")["voxels_region"].first()
    for _, part in table.groupby("expert"):
        overall = (part.set_index("region")["share"] * weights).sum() / weights.sum()
        assert part["expected_share"].iloc[0] == pytest.approx(overall)


@pytest.mark.parametrize("name", ["neuromorphometrics", "harvard_oxford"])
def test_planted_ventricle_expert_ranks_the_lateral_ventricles_first(name, mni_config, make_trace):
    """Expert 0 takes every token that touches a lateral ventricle; the others are random."""
    atlas = load_atlas(name, mni_config)
    ventricles = atlas.find("lateral.ventric")["index"].to_numpy()
    assert len(ventricles) == 2
    grid_size = (20, 24, 20)  # 8 mm tokens
    p = patch_voxels(mni_config, grid_size)
    in_ventricle = np.isin(atlas.data, ventricles)
    blocks = in_ventricle.reshape(grid_size[0], p[0], grid_size[1], p[1], grid_size[2], p[2])
    touches = blocks.any(axis=(1, 3, 5))  # tokens with at least one ventricle voxel
    top1 = np.random.default_rng(0).integers(0, 8, size=touches.size)
    top1[touches.ravel()] = 0
    labels = expert_label_img(make_trace(top1[None], 8, grid_size)[1], grid_size, mni_config)
    table = region_table(labels, atlas, 8)
    ranked = table[table["expert"] == 0].sort_values(["enrichment", "voxels_routed"], ascending=False)
    assert set(ranked["region_index"].iloc[:2]) == set(ventricles)
    assert ranked["share"].iloc[:2].tolist() == [1.0, 1.0]
    assert ranked["enrichment"].iloc[2] < ranked["enrichment"].iloc[0]
    # for the random experts the ventricles are not special: their share there is 0
    others = table[(table["expert"] > 0) & table["region_index"].isin(ventricles)]
    assert (others["share"] == 0).all()


def test_age_trends_match_scipy_linregress():
    rng = np.random.default_rng(4)
    ages = {f"s{i}": float(a) for i, a in enumerate(rng.uniform(20, 80, size=30))}
    rows = []
    for sid, age in ages.items():
        share_a = 0.2 + 0.004 * age + rng.normal(0, 0.02)  # +0.04 per decade
        rows += [
            {"subject_id": sid, "layer": 1, "atlas": "t", "region_index": 1, "region": "A", "expert": 0,
             "share": share_a},
            {"subject_id": sid, "layer": 1, "atlas": "t", "region_index": 1, "region": "A", "expert": 1,
             "share": 1 - share_a},
            {"subject_id": sid, "layer": 1, "atlas": "t", "region_index": 2, "region": "B", "expert": 0,
             "share": 0.5},
        ]  # fmt: skip
    ages["no_age"] = float("nan")
    trends = age_trends(pd.DataFrame(rows), ages).set_index(["region", "expert"])
    x = np.array(list(ages.values())[:-1])
    y = np.array([r["share"] for r in rows if r["region"] == "A" and r["expert"] == 0])
    ref = stats.linregress(x, y)
    row = trends.loc[("A", 0)]
    assert row["n_subjects"] == 30
    assert row["slope_per_decade"] == pytest.approx(10 * ref.slope)
    assert row["intercept"] == pytest.approx(ref.intercept)
    assert row["pearson_r"] == pytest.approx(ref.rvalue)
    assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert row["slope_per_decade"] == pytest.approx(0.04, abs=0.01)
    assert trends.loc[("A", 1), "pearson_r"] == pytest.approx(-ref.rvalue)
    assert np.isnan(trends.loc[("B", 0), "pearson_r"])  # constant share: no correlation
