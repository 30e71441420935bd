"""kind=tasks: forgetting and transfer in a task sequence (data kind "sequence", docs/theory.md#task-sequences): the
loss of every phase's task L_p(W(t)) at every record (``task_loss``), one line per phase, whichever task is trained.

The switch times (``phase_starts``) are dashed vertical lines; each phase's span is tinted in the colour of the task
it trains and named on the top axis ("training on task A", …). A task's loss rising in a later phase's span is
forgetting; a task's loss falling before its own phase is transfer. The legend gives each task's loss at the end of its
phase and at the end of the run (how much was forgotten).

y_scale=auto is log when the drawn losses span more than LOG_SPAN (a learned task's loss falls by decades), linear
otherwise. On a log axis values at or below the round-off floor (ε²·the largest task loss, as on the loss figure:
``loss.roundoff_floor``) are not drawn and counted. The time axis is chosen as the loss figure's (``timing``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .common import Context, Options, PlotError, array, fmt, method_name, outcome_note, precision_of
from .render import new_figure
from .style import GRID, colours, legend_right, log_axis, note, sample, wrap
from .timing import apply_time_axis, auto_scale, shown

LOG_SPAN = 100.0            # auto y: log when the largest drawn loss is more than this times the smallest positive one
SPAN_ALPHA = 0.07           # the tint of a phase's span
NARROW_SPAN = 0.2           # a phase spanning less of the time axis is named "task B", not "training on task B"
SAME_RTOL = 1e-12           # two phases whose task losses agree this closely at every record train one task


def task_names(n: int) -> list[str]:
    """"task A", "task B", … (past 26 phases "task 27", …): one per phase, in order."""
    return [f"task {chr(ord('A') + p)}" if p < 26 else f"task {p + 1}" for p in range(n)]


def not_a_sequence() -> PlotError:
    return PlotError("this simulation is a single task (its data.kind is not \"sequence\"): the tasks plot draws the "
                     "loss of every phase's task (trajectory.task_loss)", field="kind",
                     fix='run a task sequence, data {"kind": "sequence", "phases": [{"data": …, "until": t}, '
                         '{"data": …}]}, or draw this run with kind=loss', code="not_recorded")


def task_losses(doc: Mapping[str, Any]) -> tuple[np.ndarray, list[str]]:
    """The (T, P) task losses and, per phase, "loss" or "excess_loss" (a task without Σ33)."""
    if doc.get("task_loss") is None or doc.get("phase_starts") is None:
        raise not_a_sequence()
    losses = array(doc["task_loss"])
    losses = losses.reshape(len(array(doc["time"])), -1)
    kinds = doc.get("task_loss_kind")
    return losses, ["loss"] * losses.shape[1] if kinds is None else [str(k) for k in np.ravel(kinds)]


def round_off(losses: np.ndarray, doc: Mapping[str, Any], context: Context) -> float:
    """ε²·S, S the largest task loss: what the recorded maps resolve (``loss.roundoff_floor``, per task)."""
    finite = losses[np.isfinite(losses)]
    eps = context.precision if context.precision is not None else precision_of(doc.get("method"))
    return eps * eps * float(np.max(finite, initial=0.0))


def repeats(losses: np.ndarray) -> list[int | None]:
    """Per phase, the earlier phase with the same task (its losses equal at every record), else None."""
    same: list[int | None] = []
    for p in range(losses.shape[1]):
        same.append(next((q for q in range(p) if same[q] is None and
                          np.allclose(losses[:, q], losses[:, p], rtol=SAME_RTOL, atol=0.0, equal_nan=True)), None))
    return same


def spans(starts: Sequence[float], end: float) -> list[tuple[float, float]]:
    """[start, end) of every phase."""
    bounds = [float(s) for s in starts] + [float(end)]
    return [(bounds[p], bounds[p + 1]) for p in range(len(starts))]


def figure(doc: Mapping[str, Any], options: Options, context: Context) -> Figure:
    losses, kinds = task_losses(doc)
    time = array(doc["time"])
    starts = array(doc["phase_starts"])
    n = losses.shape[1]
    names = task_names(n)
    scale, time_note = auto_scale(doc, options.time_scale, time)
    keep = shown(time, scale)
    finite = np.isfinite(losses)
    positive = losses[keep[:, None] & finite & (losses > 0)]
    wide = positive.size > 0 and float(positive.max()) > LOG_SPAN * float(positive.min())
    y_log = options.y_scale == "log" or (options.y_scale == "auto" and wide)
    floor = round_off(losses, doc, context) if y_log else 0.0
    fig = new_figure(10.5, 5.6)
    ax = fig.add_subplot()
    palette = colours(n)
    t_end = float(time[-1]) if time.size else 0.0
    phase_spans = spans(starts, t_end)
    same = repeats(losses)
    handles, dropped = [], 0
    for p in range(n):
        y = losses[:, p]
        ok = keep & np.isfinite(y) & ((y > floor) if y_log else True)
        dropped += int(np.sum(keep & np.isfinite(y) & ~ok))
        label = _task_label(names[p], kinds[p], phase_spans[p], p == n - 1, time, y)
        if same[p] is not None:     # drawn dashed over the earlier phase's line: both stay visible
            label += f" (the same task as {names[same[p]].split()[-1]})"
        (line,) = ax.plot(time[ok], y[ok], color=palette[p], lw=2.4, alpha=0.85, zorder=3 + (same[p] is not None),
                          ls=(0, (4, 3)) if same[p] is not None else "-", gid=f"task-loss-{p}", label=wrap(label))
        handles.append(line)
    apply_time_axis(ax, doc, scale, time)         # before the top axis, which takes the time axis's scale
    _mark_phases(ax, phase_spans, names, palette, scale, time)
    if n > 1:
        handles.append(sample("dashed vertical: a switch to the next task (phase_starts)", ls="--", lw=1.0))
    handles.append(sample("tint: the span in which that task is trained", lw=8, alpha=0.2))
    notes = []
    if y_log:
        ax.set_yscale("log")
        log_axis(ax.yaxis, [v for h in handles[:n] for v in np.ravel(h.get_ydata())])
        if dropped:
            notes.append(f"{dropped} value{'s' if dropped > 1 else ''} at or below the round-off floor ≈ "
                         f"{fmt(floor, 2)} not shown (log scale)")
    if time_note:
        notes.append(time_note)
    ax.set_ylabel(_y_label(kinds) + ("  [log scale]" if y_log else ""))
    ax.set_title(f"Task losses, {n} tasks in sequence — {method_name(doc)} ({outcome_note(doc)})")
    ax.grid(True, which="major", **GRID)
    legend_right(ax, handles + [note(t) for t in notes], title="the loss on every task, whichever is trained")
    return fig


def _task_label(name: str, kind: str, span: tuple[float, float], last: bool, time: np.ndarray,
                y: np.ndarray) -> str:
    """"L_A(t): task A, trained on t ∈ [0, 5); 1e-07 at its switch, 0.58 at the end" (the last: "… at the end")."""
    letter = name.split()[-1]
    symbol = f"L_{letter}(t)" if kind == "loss" else f"L_{letter}(t) − L*_{letter}"
    trained = f"t ≥ {fmt(span[0])}" if last else f"t ∈ [{fmt(span[0])}, {fmt(span[1])})"
    label = f"{symbol}: {name}, trained on {trained}"
    if not time.size or not np.isfinite(y[-1]):
        return label
    i = max(int(np.searchsorted(time, span[1], side="right")) - 1, 0)     # the last record at or before the switch
    if not last and np.isfinite(y[i]):
        return label + f"; {fmt(y[i], 3)} at its switch, {fmt(y[-1], 3)} at the end"
    return label + f"; {fmt(y[-1], 3)} at the end"


def _y_label(kinds: Sequence[str]) -> str:
    if all(k == "loss" for k in kinds):
        return "task loss L_p(W(t)) = (1/N) Σ ‖y_p − W x_p‖²"
    if all(k != "loss" for k in kinds):
        return "task excess loss L_p − L*_p\n(L_p itself is unknown: Σ33 was not given)"
    return "task loss L_p (L_p − L*_p for a task without Σ33)"


def _mark_phases(ax, phase_spans: list[tuple[float, float]], names: list[str], palette: list, scale: str,
                 time: np.ndarray) -> None:
    """Each phase's span tinted in its task's colour, the switches dashed, the spans named on the top axis."""
    lo = float(time[time > 0][0]) if scale == "log" and np.any(time > 0) else (float(time[0]) if time.size else 0.0)
    hi = float(time[-1]) if time.size and time[-1] > lo else lo + 1.0

    def place(t: float) -> float:              # a time's position along the axis
        return float(np.log(t)) if scale == "log" else t

    centres, labels, tints = [], [], []
    for p, (a, b) in enumerate(phase_spans):
        a_shown = max(a, lo)
        if b <= a_shown:
            continue
        ax.axvspan(a_shown, b, color=palette[p], alpha=SPAN_ALPHA, lw=0, zorder=0)
        if p > 0:
            ax.axvline(a, color="0.35", ls="--", lw=1.0, zorder=2)
        centres.append(float(np.sqrt(a_shown * b)) if scale == "log" else 0.5 * (a_shown + b))
        narrow = (place(b) - place(a_shown)) < NARROW_SPAN * (place(hi) - place(lo))
        labels.append(names[p] if narrow else f"training on {names[p]}")
        tints.append(palette[p])
    top = ax.secondary_xaxis("top")
    top.set_xticks(centres, labels)
    top.set_xticks([], minor=True)
    top.tick_params(length=0)
    for tick, colour in zip(top.get_xticklabels(), tints):
        tick.set_color(colour)
