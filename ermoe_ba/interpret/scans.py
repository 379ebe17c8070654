"""Expert maps straight from scan files: predict with routing capture, then :func:`build_maps`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ermoe_ba.data.discovery import ScanRecord
from ermoe_ba.inference.predictor import BrainAgePredictor
from ermoe_ba.inference.routing_io import check_routed_by, load_routing
from ermoe_ba.inference.table import PredictionTable
from ermoe_ba.interpret.build import MapsResult, build_maps, load_atlases
from ermoe_ba.interpret.linear_weights import age_weight_img, linear_members
from ermoe_ba.interpret.tokens import select_layers

__all__ = ["map_scans"]


def map_scans(
    predictor: BrainAgePredictor,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    ages: str | Path | None = None,
    atlas: Any = None,
    layers: str | int | Sequence[int] = "all",
    native: bool = True,
    batch_size: int = 4,
    workers: int = 1,
    progress: bool = True,
    figures: bool = True,
    resume: bool = False,
    on_batch: Callable[[list[dict]], None] | None = None,
    on_discovered: Callable[[list[ScanRecord]], None] | None = None,
) -> tuple[MapsResult | None, pd.DataFrame]:
    """Conform and predict ``inputs`` with routing capture, then write maps, tables and report.

    Routing traces are kept in ``out_dir/routing/<subject_id>.npz`` and predictions in
    ``out_dir/predictions.csv``; a hybrid ensemble's linear member adds its age-weight map.
    Returns the maps result (None when no scan was usable) and the predictions table.
    ``on_discovered`` sees the scan records found in ``inputs`` before any work; ``out_dir`` is
    made only after that, so inputs without scans (``DiscoveryError``) leave no folder behind.

    With ``resume=True`` the run continues an earlier one in ``out_dir``: scans already in its
    ``predictions.csv`` (with their routing trace, when they were predicted) are not conformed
    again, and the tables, cohort maps and report cover the earlier scans and the new ones.
    Without it, the table is replaced and only this run's scans enter the cohort maps. Resuming a
    run made with another checkpoint, or a model without MoE layers, raises ValueError before
    anything is written.

    Examples
    --------
    >>> result, table = map_scans(BrainAgePredictor.from_pretrained(), ["scans/"], "maps")  # doctest: +SKIP
    """
    predictor.check_has_experts("map")
    select_layers(predictor.routed_layers(), layers)  # a wrong --layer is refused before any scan is conformed
    atlases = load_atlases(atlas, predictor.preprocess)  # so is an unreadable atlas
    out = Path(out_dir)
    records = predictor.discover(list(inputs), ages)
    if on_discovered is not None:
        on_discovered(records)
    out.mkdir(parents=True, exist_ok=True)
    routing_dir = out / "routing"
    table = PredictionTable(out / "predictions.csv", resume=resume)
    table.keep_only(lambda row: row["status"] != "ok" or (routing_dir / f"{row['subject_id']}.npz").exists())
    for row in table.rows:  # before anything is written: an earlier run's traces must be of this model
        if row["status"] == "ok":
            check_routed_by(routing_dir / f"{row['subject_id']}.npz", predictor.checkpoint_sha256)
    todo = [r for r in records if not table.done(r.subject_id, r.path)]
    for rows in predictor.iter_batches(
        todo, batch_size=batch_size, workers=workers, routing_dir=routing_dir, progress=progress
    ):
        table.add(rows)
        if on_batch is not None:
            on_batch(rows)
    frame = table.frame()
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return None, frame
    traces, native_maps = {}, {}
    for sid, path in zip(ok["subject_id"], ok["path"], strict=True):
        trace, transform, _ = load_routing(routing_dir / f"{sid}.npz")
        traces[sid] = trace
        if native and transform is not None:
            native_maps[sid] = (transform, path)
    known_ages = {sid: float(age) for sid, age in zip(ok["subject_id"], ok["age"], strict=True) if pd.notna(age)}
    weight_maps = {
        f"linear_member{i}_age_weights" if i else "linear_age_weights": (
            age_weight_img(member, predictor.preprocess, predictor.target_std),
            "Linear member of the hybrid ensemble: years of predicted age per unit of normalised intensity "
            "at each 2 mm voxel (weights, not effects: they also cancel correlated noise)",
        )
        for i, member in enumerate(linear_members(predictor.model))
    }
    result = build_maps(
        traces,
        predictor.preprocess,
        out,
        atlas=atlases,
        layers=layers,
        native=native_maps,
        ages=known_ages or None,
        figures=figures,
        title=f"ermoe-ba expert maps ({predictor.model_name}, {len(traces)} scans)",
        weight_maps=weight_maps,
    )
    return result, frame
