"""Brain-age prediction from files: the predictor, the predictions table, bundled weights."""

from __future__ import annotations

from ermoe_ba.inference.predictor import BrainAgePredictor
from ermoe_ba.inference.pretrained import bundled_models, resolve_checkpoint
from ermoe_ba.inference.table import PREDICTION_COLUMNS, PredictionTable, merge_tables, read_table

__all__ = [
    "PREDICTION_COLUMNS",
    "BrainAgePredictor",
    "PredictionTable",
    "bundled_models",
    "merge_tables",
    "read_table",
    "resolve_checkpoint",
]
