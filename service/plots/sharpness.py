"""kind=sharpness: the largest eigenvalues of the Hessian of the training loss (``trajectory.sharpness``, records × k,
record.sharpness with record.sharpness_k) against time, with the stability threshold of GD dashed (Cohen et al. 2021's
edge of stability: ``sharpness_threshold`` = 2/η, 2(1 + μ)/η with heavy-ball momentum, minus the weight decay γ).

The top eigenvalue λ_1 is the sharpness S(t) (bold); λ_2 … λ_k are thinner. A smaller panel above shares the time
axis and draws the training loss (log): at the edge of stability the sharpness hovers at 2/η while the loss keeps
falling, not monotonically. A flow or exact run has no step size and so no threshold: the legend says so.

The threshold is drawn on the axis when the sharpness reaches THRESHOLD_REACH of it; further away it would squash the
curves to the bottom of the axis, so it is named in the legend as out of view (with how close S came). y_scale=auto
is linear (the threshold is a linear notion), from 0 unless an eigenvalue is negative.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .common import Context, Options, PlotError, array, fmt, method_name, outcome_note
from .loss import roundoff_floor
from .render import new_figure
from .style import GRID, MAX_LEGEND_ROWS, colours, figure_legend, log_axis, note, wrap
from .timing import apply_time_axis, auto_scale, shown

THRESHOLD_REACH = 0.2       # draw the threshold on the axis when max S ≥ this fraction of it
THRESHOLD_COLOUR = "C3"


def eigenvalues(doc: Mapping[str, Any]) -> np.ndarray:
    """The (T, k) recorded Hessian eigenvalues, descending; a PlotError when record.sharpness was not set."""
    if doc.get("sharpness") is None:
        raise PlotError("this simulation did not record the sharpness (the top Hessian eigenvalues)", field="kind",
                        fix="run the simulation again with record.sharpness set to true (record.sharpness_k for "
                            "the top k eigenvalues)", code="not_recorded")
    return array(doc["sharpness"]).reshape(len(array(doc["time"])), -1)


def threshold_formula(training: Mapping[str, Any] | None) -> str:
    """The threshold in symbols for this training section: 2/η, 2(1 + μ)/η, 2(1 + μ)/((1 + 2μ)η), − γ."""
    if training is None:
        return "2/η"
    mu = float(training.get("momentum") or 0.0)
    gamma = float(training.get("weight_decay") or 0.0)
    formula = "2/η" if mu == 0 else ("2(1 + μ)/((1 + 2μ)η)" if training.get("nesterov") else "2(1 + μ)/η")
    return formula + (" − γ" if gamma else "")


def step_size_note(doc: Mapping[str, Any], training: Mapping[str, Any] | None) -> str:
    """η (and μ, γ) as a title's suffix."""
    if not training or training.get("learning_rate") is None:
        return ""
    parts = [f"η = {fmt(float(training['learning_rate']))}"]
    if training.get("momentum"):
        parts.append(f"μ = {fmt(float(training['momentum']))}" + (" (Nesterov)" if training.get("nesterov") else ""))
    if training.get("weight_decay"):
        parts.append(f"γ = {fmt(float(training['weight_decay']))}")
    return ", " + ", ".join(parts)


def first_crossing(time: np.ndarray, s: np.ndarray, threshold: float) -> float | None:
    """The first recorded time at which the sharpness reaches the threshold (None: it never does)."""
    hit = np.flatnonzero(np.isfinite(s) & (s >= threshold))
    return float(time[hit[0]]) if hit.size else None


def figure(doc: Mapping[str, Any], options: Options, context: Context) -> Figure:
    lam = eigenvalues(doc)
    time = array(doc["time"])
    k = lam.shape[1]
    scale, time_note = auto_scale(doc, options.time_scale, time)
    keep = shown(time, scale)
    fig = new_figure(10.5, 6.4)
    grid = fig.add_gridspec(2, 1, height_ratios=(1.0, 2.3))
    ax = fig.add_subplot(grid[1])
    top = fig.add_subplot(grid[0], sharex=ax)
    loss_handles = _loss_panel(top, doc, time, keep, context)
    y_log = options.y_scale == "log"
    palette = ["k"] + colours(k)[1:]            # C0 is the loss above
    handles, dropped = [], 0
    for i in range(k):
        y = lam[:, i]
        ok = keep & np.isfinite(y) & ((y > 0) if y_log else True)
        dropped += int(np.sum(keep & np.isfinite(y) & ~ok))
        label = "S(t) = λ_1: the sharpness, the top Hessian eigenvalue" if i == 0 else f"λ_{i + 1}"
        (line,) = ax.plot(time[ok], y[ok], color=palette[i], lw=2.2 if i == 0 else 1.3, alpha=0.9 if i == 0 else 0.8,
                          zorder=4 if i == 0 else 3, gid=f"eigenvalue-{i + 1}", label=wrap(label))
        if i < MAX_LEGEND_ROWS:
            handles.append(line)
    if k > MAX_LEGEND_ROWS:
        handles.append(note(f"… and λ_{MAX_LEGEND_ROWS + 1} … λ_{k}"))
    notes = _threshold(ax, doc, lam[:, 0], time, handles, context)
    if dropped:
        notes.append(f"{dropped} values ≤ 0 not shown (log scale)")
    if time_note:
        notes.append(time_note)
    if y_log:
        ax.set_yscale("log")
        log_axis(ax.yaxis, [v for h in handles if hasattr(h, "get_ydata") for v in np.ravel(h.get_ydata())])
    else:
        finite = lam[keep & np.isfinite(lam[:, 0])]
        lowest = float(np.nanmin(finite)) if finite.size else 0.0
        ax.set_ylim(bottom=min(0.0, 1.05 * lowest))
    apply_time_axis(ax, doc, scale, time)
    top.tick_params(labelbottom=False)
    top.set_xlabel("")
    ax.set_ylabel("Hessian eigenvalue of L" + ("  [log scale]" if y_log else ""))
    ax.grid(True, which="major", **GRID)
    top.set_title(f"Sharpness — {method_name(doc)}{step_size_note(doc, context.training)} ({outcome_note(doc)})")
    figure_legend(fig, loss_handles + handles + [note(t) for t in notes])
    return fig


def _threshold(ax, doc: Mapping[str, Any], s: np.ndarray, time: np.ndarray, handles: list,
               context: Context) -> list[str]:
    """The threshold dashed (or named as out of view), its legend row appended to ``handles``; the notes."""
    threshold = None if doc.get("sharpness_threshold") is None else float(doc["sharpness_threshold"])
    if threshold is None or not np.isfinite(threshold):
        return [f"{method_name(doc)}: no step size, so no 2/η threshold (the edge of stability is GD's)"]
    formula = threshold_formula(context.training)
    reached = float(np.nanmax(s)) if np.isfinite(s).any() else 0.0
    label = f"{formula} = {fmt(threshold)} (edge of stability)"
    if reached >= THRESHOLD_REACH * threshold:
        handles.append(ax.axhline(threshold, color=THRESHOLD_COLOUR, ls="--", lw=1.4, zorder=2, label=wrap(label),
                                  gid="sharpness-threshold"))
        ax.set_ylim(top=1.08 * max(threshold, reached))
    else:
        handles.append(note(f"{label}: above the axis, S stays below {reached / threshold:.0%} of it"))
        return []
    crossing = first_crossing(time, s, threshold)
    if crossing is None:
        return [f"S stays below {formula}: the largest is {fmt(reached, 3)} = {reached / threshold:.3g}·{formula}"]
    return [f"S first reaches {formula} at t = {fmt(crossing, 4)}; its largest is {reached / threshold:.3g}·{formula}"]


def _loss_panel(ax, doc: Mapping[str, Any], time: np.ndarray, keep: np.ndarray, context: Context) -> list:
    """The training loss (log, above its round-off floor) in the small panel; its legend rows."""
    known = doc.get("loss") is not None
    y = array(doc["loss"] if known else doc["excess_loss"])
    floor = roundoff_floor(doc, context)
    ok = keep & np.isfinite(y) & (y > floor)
    (line,) = ax.plot(time[ok], y[ok], color="C0", lw=1.8, alpha=0.8,
                      label="L(t): training loss (top panel)" if known else "L(t) − L*: excess training loss (top)")
    if ok.any():
        ax.set_yscale("log")
        log_axis(ax.yaxis, y[ok])
    ax.set_ylabel("loss L" if known else "L − L*")
    ax.grid(True, which="major", **GRID)
    return [line]
