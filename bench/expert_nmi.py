"""Benchmark: how anatomical are the experts? NMI between top-1 expert and atlas region.

For each model, every development scan is conformed, predicted with routing capture and mapped
(``ermoe_ba.interpret.map_scans``); the pooled normalised mutual information between the
voxel-wise top-1 expert and the atlas region is reported per MoE layer and atlas, next to the
chance level of the same routing with the expert labels permuted across each scan's tokens.
Next to it, the top-1 load per layer twice: over every token (background included) and over the
brain voxels (tissue atlas), to tell how much of an uneven load is the background's.
Prints one JSON line.

    python bench/expert_nmi.py --models default softmax=ermoe_ba/weights/... --save bench/results/expert_nmi.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _report import emit

DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "ixi_hh_2mm_nichart" / "ages.csv"


def permuted(traces: dict, seed: int = 0) -> dict:
    """The same traces with each scan's token order shuffled (same load, no anatomy)."""
    from ermoe_ba.routing.trace import LayerTrace, RoutingTrace

    rng = np.random.default_rng(seed)
    out = {}
    for sid, trace in traces.items():
        layers = {}
        for index, layer in trace.layers.items():
            order = torch.from_numpy(rng.permutation(layer.top_k_index.shape[1]))
            layers[index] = LayerTrace(
                index, layer.top_k_index[:, order], layer.top_k_weight[:, order], layer.scores[:, order]
            )
        out[sid] = RoutingTrace(layers, trace.grid_size)
    return out


def top1_load_cv(traces: dict, result) -> list[dict]:
    """Coefficient of variation of the top-1 load per layer: all tokens against brain voxels."""
    from ermoe_ba.routing.metrics import coefficient_of_variation

    rows = []
    for layer in sorted(result.nmi["layer"].unique()):
        top1 = torch.cat([trace.layers[layer].top_k_index[..., 0].reshape(-1) for trace in traces.values()])
        num_experts = next(iter(traces.values())).layers[layer].scores.shape[-1]
        tissue = result.regions[(result.regions.layer == layer) & (result.regions.atlas == "tissue")]
        brain = tissue.groupby("expert")["voxels_routed"].sum().reindex(range(num_experts), fill_value=0)
        rows.append(
            {
                "layer": int(layer),
                "cv_all_tokens": round(coefficient_of_variation(torch.bincount(top1, minlength=num_experts)), 3),
                "cv_brain_voxels": round(coefficient_of_variation(torch.tensor(brain.to_numpy())), 3),
            }
        )
    return rows


def measure(model: str, atlases: list[str], workers: int, out_dir: Path) -> dict:
    from ermoe_ba.inference.predictor import BrainAgePredictor
    from ermoe_ba.inference.routing_io import load_routing
    from ermoe_ba.interpret import build_maps
    from ermoe_ba.interpret.scans import map_scans

    predictor = BrainAgePredictor.from_pretrained(model, device="cpu")
    result, frame = map_scans(
        predictor, [DEV], out_dir, atlas=atlases, native=False, workers=workers, progress=False, figures=False
    )
    ok = frame[frame["status"] == "ok"]["subject_id"]
    traces = {sid: load_routing(out_dir / "routing" / f"{sid}.npz")[0] for sid in ok}
    chance = build_maps(permuted(traces), predictor.preprocess, out_dir / "chance", atlas=atlases, figures=False)
    rows = result.nmi.merge(
        chance.nmi[["layer", "atlas", "nmi_pooled"]], on=["layer", "atlas"], suffixes=("", "_chance")
    )
    return {
        "model": model,
        "router": predictor.meta["model_config"]["router"],
        "scans": len(traces),
        "nmi": [
            {
                "layer": int(r.layer),
                "atlas": r.atlas,
                "nmi_pooled": round(float(r.nmi_pooled), 4),
                "nmi_subject_mean": round(float(r.nmi_subject_mean), 4),
                "nmi_chance": round(float(r.nmi_pooled_chance), 4),
            }
            for r in rows.itertuples()
        ],
        **({"top1_load": top1_load_cv(traces, result)} if "tissue" in atlases else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default"], help="NAME or LABEL=PATH")
    parser.add_argument("--atlas", nargs="+", default=["tissue", "harvard_oxford"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the maps here (default: a temp folder)")
    parser.add_argument("--save", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    for spec in args.models:
        label, _, model = spec.partition("=")
        model = model or label
        folder = (args.out or Path(tempfile.mkdtemp(prefix="ermoe-nmi-"))) / label
        results[label] = measure(model, args.atlas, args.workers, folder)
    emit({"bench": "expert_nmi", "models": results}, args.save)


if __name__ == "__main__":
    main()
