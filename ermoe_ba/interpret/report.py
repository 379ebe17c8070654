"""One self-contained HTML report per run: figures as base64 PNG, tables as HTML, licences."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from ermoe_ba.interpret._io import write_text
from ermoe_ba.interpret.atlases import Atlas
from ermoe_ba.routing.metrics import load_metrics
from ermoe_ba.routing.trace import RoutingTrace

__all__ = ["load_metrics_table", "top_regions", "write_report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.6em 0; }
.note { color: #555; font-size: 0.9em; } .licence { font-size: 0.85em; }
"""


def load_metrics_table(traces: Mapping[str, RoutingTrace], layers: Sequence[int]) -> pd.DataFrame:
    """Expert load of every layer, pooled over subjects (all top-k assignments).

    Columns: ``layer``, ``tokens_per_expert`` (list as text), ``cv``, ``normalized_entropy``,
    ``gini``, ``max_over_mean``, ``dead_experts`` (from :func:`ermoe_ba.routing.metrics.load_metrics`).
    """
    rows = []
    for layer in layers:
        ids = torch.cat(
            [t[layer].top_k_index.reshape(-1, t[layer].top_k_index.shape[-1]) for t in traces.values()]
        )
        metrics = load_metrics(ids, next(iter(traces.values()))[layer].num_experts)
        counts = " ".join(str(int(c)) for c in metrics.pop("tokens_per_expert"))
        rows.append({"layer": layer, "tokens_per_expert": counts, **metrics})
    return pd.DataFrame(rows)


def top_regions(table: pd.DataFrame, per_expert: int = 3, min_voxels: int = 20) -> pd.DataFrame:
    """The ``per_expert`` most enriched regions of each expert (regions of ``>= min_voxels``).

    Ties in enrichment go to the region with more routed voxels.
    """
    keys = [k for k in ("layer", "atlas", "expert") if k in table.columns]
    big = table[table["voxels_region"] >= min_voxels]
    ranked = big.sort_values(
        [*keys, "enrichment", "voxels_routed"], ascending=[True] * len(keys) + [False, False]
    )
    return ranked.groupby(keys, sort=False).head(per_expert).reset_index(drop=True)


def _table_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0, na_rep="-", escape=True)


def write_report(
    path: str | Path,
    *,
    title: str,
    summary: Mapping[str, object],
    figures: Mapping[str, bytes] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    atlases: Sequence[Atlas] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write the HTML report atomically.

    Parameters
    ----------
    path
        Output ``.html`` file.
    title
        Page title.
    summary
        Key facts of the run (subjects, layers, model grid, ...) shown first.
    figures
        ``{caption: PNG bytes}``, embedded as base64 images in this order.
    tables
        ``{heading: DataFrame}``, shown in this order after the figures.
    atlases
        Atlases used; their licence, citation and space are listed.
    notes
        Method notes (definitions, caveats) shown at the end.

    Returns
    -------
    pathlib.Path
    """
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="note">Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by ermoe-ba.</p>',
        "<h2>Run</h2><table>",
        *(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in summary.items()),
        "</table>",
    ]
    if figures:
        parts.append("<h2>Figures</h2>")
        for caption, png in figures.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<h3>{esc(caption)}</h3><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
            )
    for heading, table in (tables or {}).items():
        parts.append(f"<h2>{esc(heading)}</h2>{_table_html(table)}")
    if atlases:
        parts.append("<h2>Atlases and licences</h2>")
        for atlas in atlases:
            parts.append(
                f"<h3>{esc(atlas.name)}: {esc(atlas.title)}</h3><p class='licence'><b>Licence:</b> "
                f"{esc(atlas.licence)}<br><b>Cite:</b> {esc(atlas.citation or '-')}<br>"
                f"<b>Drawn in:</b> {esc(atlas.space or 'unknown')}</p>"
            )
    if notes:
        parts.append("<h2>Methods and caveats</h2><ul>")
        parts.extend(f"<li>{esc(n)}</li>" for n in notes)
        parts.append("</ul>")
    parts.append("</body></html>")
    return write_text("\n".join(parts), path)
