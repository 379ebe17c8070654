"""Write predictions for a BIDS input as a BIDS-derivatives folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ermoe_ba import __version__
from ermoe_ba.atomic import write_json_atomic
from ermoe_ba.inference.table import write_table_atomic

__all__ = ["write_bids_derivatives"]

_SIDECAR = {
    "predicted_age": {"Description": "Brain age predicted by ermoe-ba", "Units": "years"},
    "age": {"Description": "Chronological age from participants.tsv or --ages", "Units": "years"},
    "brain_age_gap": {"Description": "predicted_age - age", "Units": "years"},
    "brain_age_gap_corrected": {
        "Description": "Gap after the linear age-bias correction stored with the model "
        "(fitted on its training data, never on these subjects)",
        "Units": "years",
    },
    "qc_score": {"Description": "Similarity of the registered scan to the MNI152 template"},
    "status": {"Description": "ok, qc_fail or error"},
}


def write_bids_derivatives(table: pd.DataFrame, out_dir: str | Path, model_name: str) -> Path:
    """Write ``dataset_description.json`` and ``sub-*/[ses-*/]anat/*_brainage.tsv`` + JSON sidecars.

    Parameters
    ----------
    table
        The predictions table; ``subject_id`` holds BIDS labels ``sub-XX[_ses-YY]``.
    out_dir
        Root of the derivatives dataset (created).
    model_name
        Recorded in the ``GeneratedBy`` entry.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": "ermoe-ba brain-age predictions",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "ermoe-ba", "Version": __version__, "Description": f"model {model_name}"}],
    }
    write_json_atomic(root / "dataset_description.json", description)
    for _, row in table.iterrows():
        parts = str(row["subject_id"]).split("_")
        folder = root.joinpath(*parts[:2] if len(parts) > 1 and parts[1].startswith("ses-") else parts[:1], "anat")
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{row['subject_id']}_brainage"
        write_table_atomic(pd.DataFrame([row]), folder / f"{stem}.tsv")
        write_json_atomic(folder / f"{stem}.json", _SIDECAR)
    return root
