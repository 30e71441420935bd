"""kind=product: the network map W(t) = W_D⋯W_1 as heatmaps at chosen times, next to the optimum W* (and the teacher W̄
of a noisy-teacher preset).

Default times: with test data the early-stopping time t_stop (the record of least test loss) and the last record,
so the overfit end sits between the early-stopped map and the teacher; otherwise the stage times (the modes'
learning times, up to four) and the last record. ``times`` picks the records nearest each time instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from . import heatmaps
from .common import Context, Options, array, fmt, method_name, nearest_records, outcome_note
from .render import new_figure
from .timing import stage_times


def snapshot_records(doc: Mapping[str, Any], options: Options) -> list[tuple[int, str]]:
    """(record index, panel title) of the W(t) panels (module docstring)."""
    time = array(doc["time"])
    last = len(time) - 1
    if options.times:
        return [(i, f"W(t = {fmt(time[i])})") for i in nearest_records(time, options.times)]
    stop = doc.get("early_stopping") or {}
    if stop.get("time") is not None:
        i = int(np.argmin(np.abs(time - stop["time"])))
        out = [(i, f"W(t_stop = {fmt(time[i])})\nearly stopping: least L_test")]
        if i != last:
            out.append((last, f"W(t = {fmt(time[last])})\nlast record"))
        return out
    out = [(i, f"W(t = {fmt(time[i])})\n{label}") for i, label in stage_times(doc) if i != last]
    return out + [(last, f"W(t = {fmt(time[last])})\nlast record")]


def figure(doc: Mapping[str, Any], options: Options, context: Context) -> Figure:
    time = array(doc["time"])
    product = array(doc["product"]).reshape(len(time), *np.shape(doc["optimum"]["product"]))
    w_star = array(doc["optimum"]["product"])
    panels = [(title, product[i]) for i, title in snapshot_records(doc, options)]
    panels.append((f"W*: the optimum\n(best map of rank {doc['optimum']['rank']})", w_star))
    if context.teacher is not None and np.shape(context.teacher) == w_star.shape:
        panels.append(("W̄: the teacher\n(noise-free map)", np.asarray(context.teacher, dtype=np.float64)))
    labels = context.labels or {}
    items, features = labels.get("items"), labels.get("features")
    n_out, n_in = w_star.shape
    rows = heatmaps.select(n_out, np.linalg.norm(w_star, axis=1), "output features", "W*")
    cols = heatmaps.select(n_in, np.linalg.norm(w_star, axis=0), "inputs", "W*")
    n = len(panels)
    ncols = min(n, heatmaps.PANELS_PER_ROW)
    nrows = (n + ncols - 1) // ncols
    aspect = min(max(rows.index.size / cols.index.size, 1 / heatmaps.MAX_ASPECT), heatmaps.MAX_ASPECT)
    box_h = 2.8 if aspect >= 1 else 2.8 * aspect
    box_w = box_h / aspect
    fig = new_figure(1.8 + ncols * (box_w + 0.7), 1.4 + nrows * (box_h + 1.3))
    heatmaps.draw(fig, panels, rows=rows, cols=cols,
                  xlabel="input (item) i" if items else "input i", ylabel="output (feature) j" if features else
                  "output j", xnames=items, ynames=features, colour_label="entry W_ji (one scale for every panel)")
    statements = [s.statement for s in (rows, cols) if s.statement]
    title = f"Network map W = W_D⋯W_1 — {method_name(doc)} ({outcome_note(doc)})"
    fig.suptitle("\n".join([title, *statements]), fontsize=11)
    return fig
