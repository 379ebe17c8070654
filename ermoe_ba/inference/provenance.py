"""Which model and settings made a predictions table: a JSON sidecar, checked when a run resumes.

``predictions.csv`` gets ``predictions.json`` beside it with the ermoe-ba version, the model (name
or path as given, sha256 of the checkpoint file, architecture), its age-bias correction, the shift
averaging and whether scans were registered. A paper can cite it; ``--resume`` refuses to add
rows made another way to a table, which would mix two models' ages in one column.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ermoe_ba import __version__
from ermoe_ba.atomic import write_json_atomic
from ermoe_ba.differences import describe_differences

__all__ = [
    "SAME_RUN_KEYS",
    "check_same_run",
    "merged_run_description",
    "run_description",
    "sidecar_path",
    "write_run_description",
]

SAME_RUN_KEYS = ("model_sha256", "shift_average", "register")  # rows differ if any of these does


def run_description(predictor: Any, register: bool) -> dict[str, Any]:
    """The settings that decide a prediction, for a :class:`~ermoe_ba.inference.BrainAgePredictor`."""
    return {
        "ermoe_ba_version": __version__,
        "model": getattr(predictor, "name", None),
        "model_sha256": predictor.checkpoint_sha256,
        "architecture": predictor.model_name,
        "bias_correction": predictor.meta.get("bias_correction"),
        "shift_average": predictor.shift_average,
        "register": register,
        "preprocess": predictor.preprocess.to_dict(),
    }


def sidecar_path(table: str | Path) -> Path:
    """``predictions.csv`` -> ``predictions.json``."""
    return Path(table).with_suffix(".json")


def write_run_description(table: str | Path, description: dict[str, Any]) -> Path:
    """Write the sidecar of ``table`` atomically."""
    return write_json_atomic(sidecar_path(table), description)


def check_same_run(table: str | Path, description: dict[str, Any]) -> None:
    """Raise ValueError if ``table``'s sidecar says its rows were made with other settings.

    A table without a sidecar (written by an older version) is accepted.
    """
    earlier = _read_description(table)
    shown = describe_differences(earlier, description, SAME_RUN_KEYS) if earlier is not None else ""
    if shown:
        raise ValueError(
            f"{table}: its rows were made otherwise ({shown}); resume with the same options or write a new --out"
        )


def merged_run_description(tables: Sequence[str | Path]) -> dict[str, Any] | None:
    """The sidecar for a table merged from part ``tables``: the first part's, if all parts agree.

    Returns None when a part has no sidecar (written by an older version): the merged table then
    gets none either, since nothing vouches for that part's rows.

    Raises
    ------
    ValueError
        Naming the first part whose rows were made otherwise (:data:`SAME_RUN_KEYS`) than those of
        the first part: merging them would mix two models' ages in one column.
    """
    descriptions = [_read_description(t) for t in tables]
    if not descriptions or any(d is None for d in descriptions):
        return None
    first = descriptions[0]
    for table, description in zip(tables[1:], descriptions[1:], strict=True):
        shown = describe_differences(first, description, SAME_RUN_KEYS)
        if shown:
            raise ValueError(
                f"{table}: its rows were made otherwise than those of {tables[0]} ({shown}); "
                "predict all parts with the same model and options"
            )
    return first


def _read_description(table: str | Path) -> dict[str, Any] | None:
    path = sidecar_path(table)
    return json.loads(path.read_text()) if path.is_file() else None
