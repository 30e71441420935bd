"""kind=loss: the training loss L(t) (or L − L* when Σ33 is unknown), the optimum L*, with test data the test loss,
its minimum (the early-stopping point) and the loss theory; with record.linearized the loss of the network linearised
at its initialisation (the NTK fixed at K(0), dashed: the lazy limit the loss follows where learning is lazy), and for
the noisy_teacher preset Lampinen & Ganguli's random-matrix prediction (dash-dotted) beside the mode theory.

**Round-off floor.** A loss below what the recorded maps can resolve is not data: with maps known to a relative
precision ε (``common.precision_of``: 10 ulps for GD, 10·rtol for the flow), L − L* = ‖W F − G‖² − ‖W* F − G‖² is
known to about ε²·S, S the largest excess loss of the run. On a log axis the values below that floor are left out
and the floor is drawn as a grey band, named in the legend (they were jitter near 1e-15 over most of a converged
flow run's axis).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .common import Context, Options, array, fmt, method_name, outcome_note, precision_of
from .render import new_figure
from .style import GRID, legend_right, log_axis, note, sample, wrap
from .timing import apply_time_axis, auto_scale, shown

TEST_COLOUR = "C3"
LINEARIZED_COLOUR = "C2"
RANDOM_MATRIX = {"ls": "-.", "lw": 1.3, "zorder": 4}


def roundoff_floor(doc: Mapping[str, Any], context: Context) -> float:
    """ε²·S: the smallest excess loss the recorded maps resolve (module docstring); 0 when nothing moved."""
    excess = array(doc["excess_loss"])
    finite = excess[np.isfinite(excess)]
    scale = float(np.max(finite, initial=0.0))
    eps = context.precision if context.precision is not None else precision_of(doc.get("method"))
    return eps * eps * scale


def figure(doc: Mapping[str, Any], options: Options, context: Context) -> Figure:
    fig = new_figure(10.0, 5.2)
    ax = fig.add_subplot()
    time = array(doc["time"])
    scale, time_note = auto_scale(doc, options.time_scale, time)
    keep = shown(time, scale)
    known = doc.get("loss") is not None
    y = array(doc["loss"] if known else doc["excess_loss"])
    optimum = (doc.get("optimum") or {}).get("loss")
    rank = (doc.get("optimum") or {}).get("rank")
    finite = np.isfinite(y)
    y_log = options.y_scale == "log" or (options.y_scale == "auto" and bool(np.any(finite & (y > 0))))
    floor = roundoff_floor(doc, context) if y_log else 0.0
    # L* = tr Σ33 − Σ σ² cancels to round-off for a realisable task: at the floor it is 0, not a line at 1e-16
    optimum_zero = optimum is not None and optimum <= max(floor, 1e-300) * 10
    above = finite & (y > floor) if y_log else finite
    below = keep & finite & ~above
    handles, notes = [], []
    name = "L(t): training loss, (1/N) Σ ‖y − W x‖²" if known else "L(t) − L*: excess training loss"
    (line,) = ax.plot(time[keep & above], y[keep & above], color="C0", lw=2.6, alpha=0.7, label=name, zorder=3)
    handles.append(line)
    theory = doc.get("loss_theory") or {}
    qualifier = "exact" if theory.get("exact") else "approximate"
    if known and theory.get("loss") is not None:
        yt = array(theory["loss"])
        ok = keep & np.isfinite(yt) & ((yt > floor) if y_log else True)
        (t_line,) = ax.plot(time[ok], yt[ok], color="0.15", ls="--", lw=1.1, zorder=4,
                            label=f"theory of L ({theory['model']}, {qualifier})")
        handles.append(t_line)
    if known:
        handles += _random_matrix(ax, doc, "loss", time, keep, y_log, floor)
    handles += _linearized(ax, doc, time, keep, y_log, floor, known)
    handles += _test_loss(ax, doc, time, keep, y_log, floor, qualifier, scale)
    handles += _switches(ax, doc, scale)
    if known and optimum is not None:
        if optimum_zero:
            notes.append(f"L* = 0 to round-off: the best rank-{rank} map fits the data")
        else:
            handles.append(ax.axhline(optimum, color="0.3", ls=":", lw=1.2,
                                      label=f"L* = {fmt(optimum)}: least loss of a rank-{rank} map"))
    if y_log:
        ax.set_yscale("log")
        drawn = [v for h in handles if hasattr(h, "get_ydata") for v in np.ravel(h.get_ydata())]
        log_axis(ax.yaxis, drawn)
        if np.any(below) and floor > 0:
            lo = floor / 10.0
            ax.axhspan(lo, floor, color="0.85", zorder=0)
            ax.set_ylim(bottom=lo)
            handles.append(sample(f"round-off floor ≈ {fmt(floor, 2)}: {int(np.sum(below))} value"
                                  f"{'s' if np.sum(below) > 1 else ''} below it not drawn", color="0.85", lw=6))
        elif np.any(below):
            notes.append(f"{int(np.sum(below))} value{'s' if np.sum(below) > 1 else ''} ≤ 0 not shown (log scale)")
    apply_time_axis(ax, doc, scale, time)
    what = "loss L" if known else "excess loss L − L*"
    ylabel = what + ("  [log scale]" if y_log else "")
    if not known:
        ylabel += "\n(L itself is unknown: Σ33 was not given)"
    ax.set_ylabel(ylabel)
    ax.set_title(f"Loss — {method_name(doc)} ({outcome_note(doc)})")
    ax.grid(True, which="major", **GRID)
    if time_note:
        notes.append(time_note)
    if doc.get("partial"):
        notes.insert(0, f"partial: the records up to t = {fmt(time[-1], 4)} ({outcome_note(doc)})")
    legend_right(ax, handles + [note(n) for n in notes])
    return fig


def _linearized(ax, doc: Mapping[str, Any], time: np.ndarray, keep: np.ndarray, y_log: bool, floor: float,
                known: bool) -> list:
    """The linearised network's loss (record.linearized) dashed: L_lin(t), or L_lin − L* beside an excess loss."""
    values = doc.get("linearized_loss") if known else doc.get("linearized_excess_loss")
    if values is None:
        return []
    y = array(values)
    ok = keep & np.isfinite(y) & ((y > floor) if y_log else True)
    symbol = "L_lin(t)" if known else "L_lin(t) − L*"
    (line,) = ax.plot(time[ok], y[ok], color=LINEARIZED_COLOUR, ls=(0, (5, 3)), lw=1.8, zorder=4,
                      gid="linearized-loss", label=wrap(f"{symbol}: linearised at init (NTK fixed at K(0))"))
    return [line]


def _random_matrix(ax, doc: Mapping[str, Any], member: str, time: np.ndarray, keep: np.ndarray, y_log: bool,
                   floor: float) -> list:
    """Lampinen & Ganguli's random-matrix prediction of L (``member`` "loss") or L_test ("test_loss"), dash-dotted,
    where it applies (the noisy_teacher preset)."""
    theory = doc.get("loss_theory_random_matrix") or {}
    if theory.get(member) is None:
        return []
    symbol, colour = ("L", "0.4") if member == "loss" else ("L_test", "darkred")
    y = array(theory[member])
    ok = keep & np.isfinite(y) & ((y > floor) if y_log else True)
    (line,) = ax.plot(time[ok], y[ok], color=colour, **RANDOM_MATRIX, gid=f"random-matrix-{member.replace('_', '-')}",
                      label=wrap(f"theory of {symbol} (random matrix: Lampinen & Ganguli, asymptotic)"))
    return [line]


def _switches(ax, doc: Mapping[str, Any], scale: str) -> list:
    """A task sequence's switch times dashed: the loss drawn is the loss of the task being trained."""
    if doc.get("phase_starts") is None:
        return []
    starts = [float(t) for t in array(doc["phase_starts"])[1:] if t > 0 or scale != "log"]
    for t in starts:
        ax.axvline(t, color="0.35", ls="--", lw=1.0, zorder=2, gid="task-switch")
    if not starts:
        return []
    return [sample("dashed vertical: a switch to the next task; the loss is that of the task being trained "
                   "(kind=tasks draws every task's)", ls="--", lw=1.0)]


def _test_loss(ax, doc: Mapping[str, Any], time: np.ndarray, keep: np.ndarray, y_log: bool, floor: float,
               qualifier: str, scale: str) -> list:
    """The test loss (with data.test), its theory dashed and its minimum ▼ with the early-stopping time dotted."""
    if doc.get("test_loss") is None:
        return []
    handles = []
    y = array(doc["test_loss"])
    ok = keep & np.isfinite(y) & ((y > floor) if y_log else True)
    (line,) = ax.plot(time[ok], y[ok], color=TEST_COLOUR, lw=2.6, alpha=0.7, zorder=3,
                      label="L_test(t): test loss, E_test ‖y − W x‖²")
    handles.append(line)
    theory = doc.get("loss_theory") or {}
    if theory.get("test_loss") is not None:
        yt = array(theory["test_loss"])
        okt = keep & np.isfinite(yt) & ((yt > floor) if y_log else True)
        (t_line,) = ax.plot(time[okt], yt[okt], color="darkred", ls="--", lw=1.1, zorder=4,
                            label=f"theory of L_test ({theory['model']}, {qualifier})")
        handles.append(t_line)
    handles += _random_matrix(ax, doc, "test_loss", time, keep, y_log, floor)
    stop = doc.get("early_stopping") or {}
    t_stop, l_stop = stop.get("time"), stop.get("test_loss")
    if t_stop is not None and l_stop is not None and (t_stop > 0 or scale != "log"):
        handles.append(ax.axvline(t_stop, color=TEST_COLOUR, ls=":", lw=1.0, zorder=1,
                                  label=f"t_stop = {fmt(t_stop)}: early stopping (least L_test)"))
        (mark,) = ax.plot([t_stop], [l_stop], "v", color=TEST_COLOUR, ms=8, zorder=4,
                          label=f"min L_test = {fmt(l_stop)}")
        handles.append(mark)
    return handles

