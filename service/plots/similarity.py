"""kind=similarity: the hidden-layer representational similarity of the items, RSM = W21ᵀW21 (RSM_ij = h_i·h_j with
h_i = W21 e_i the hidden code of item i), at chosen times (needs record.similarity).

Default times: the start (t = 0), the stage times (the modes' learning times, up to three) and the last record, so
the panels show the representation differentiating stage by stage rather than three copies of the converged one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from . import heatmaps
from .common import Context, Options, PlotError, array, fmt, method_name, nearest_records
from .render import new_figure
from .timing import stage_times


def snapshot_records(doc: Mapping[str, Any], options: Options) -> list[tuple[int, str]]:
    time = array(doc["time"])
    last = len(time) - 1
    if options.times:
        return [(i, f"t = {fmt(time[i])}") for i in nearest_records(time, options.times)]
    out = [(0, f"t = {fmt(time[0])}\nstart")]
    out += [(i, f"t = {fmt(time[i])}\n{label}") for i, label in stage_times(doc, limit=3) if 0 < i < last]
    return out + ([(last, f"t = {fmt(time[last])}\nlast record")] if last > 0 else [])


def figure(doc: Mapping[str, Any], options: Options, context: Context) -> Figure:
    if doc.get("similarity") is None:
        raise PlotError("this simulation did not record the hidden-layer similarity", field="kind",
                        fix="run the simulation again with record.similarity set to true", code="not_recorded")
    time = array(doc["time"])
    rsm = array(doc["similarity"]).reshape(len(time), *np.shape(doc["similarity"][0]))
    panels = [(title, rsm[i]) for i, title in snapshot_records(doc, options)]
    items = (context.labels or {}).get("items")
    n = rsm.shape[1]
    side = heatmaps.select(n, np.abs(np.diag(rsm[-1])), "items", "the last record's ‖h_i‖²")
    ncols = min(len(panels), heatmaps.PANELS_PER_ROW)
    nrows = (len(panels) + ncols - 1) // ncols
    fig = new_figure(1.8 + ncols * 3.3, 1.6 + nrows * 3.9)
    name = "item i" if items else "input basis vector (item) i"
    heatmaps.draw(fig, panels, rows=side, cols=side, xlabel=name, ylabel=name.replace(" i", " j"), xnames=items,
                  ynames=items, colour_label="similarity h_i · h_j (one scale for every panel)")
    title = (f"Hidden-layer representational similarity RSM = W21ᵀW21, h_i = W21 e_i the hidden code of item i — "
             f"{method_name(doc)}")
    fig.suptitle("\n".join([title, *([side.statement] if side.statement else [])]), fontsize=11)
    return fig
