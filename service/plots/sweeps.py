"""Sweep plots: one summary value per point (a results row) against a swept parameter ``x``.

Kinds (the results row's field in brackets):

    learning_time        per mode, measured (solid, markers) and theory (dashed)   [learning_time, _theory]
    final_loss           L − L* at the last record, log                            [final_excess_loss]
    kernel_distance      the NTK's distance from its start at the last record      [final_kernel_distance]
    convergence_time     t at which the run converged                              [time_to_convergence]
    min_test_loss        the least test loss (solid) and the last (dotted)         [min_test_loss, final_test_loss]
    early_stopping_time  t of the least test loss                                  [early_stopping_time]

**Seeds.** An axis named ``seed`` (``init.seed``, ``data.seed``, …) is a repetition, not a parameter: by default
(``aggregate=seed``) each point of a line is the mean over the seeds with an error bar of ± one standard deviation
(n stated); ``aggregate=none`` draws every seed as its own line.

**Small multiples, the rule.** The other axes (neither x nor aggregated) split the points into combinations. Lines of
one panel are the combinations of the axes taken from the last one back while their numbers of values multiply to at
most MAX_LINES (an axis that would exceed it is skipped; learning_time: the modes are the lines, so every other axis
makes panels); the remaining axes make one panel per combination, in grid order, at most MAX_PANELS (the figure says
how many it leaves out). The figure states the rule it applied.

Log x when the values are positive and span more than a decade; categorical x for non-numbers (``network.hidden``).
Diverged points: a red × at the top edge; failed or unfinished ones are left out; both are counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from service.schemas.trajectory import LEARNING_TIME_DEFINITION

from .common import PlotError, fmt, is_number
from .render import new_figure
from .style import GRID, MAX_LEGEND_ROWS, colours, legend_right, log_axis, note, sample, wrap

SWEEP_KINDS = ("learning_time", "final_loss", "kernel_distance", "convergence_time", "min_test_loss",
               "early_stopping_time")
AGGREGATES = ("seed", "none")
MAX_LINES = 6
MAX_PANELS = 12
MAX_X_TICKS = 8             # up to this many swept values: a tick at each
SEED_AXIS = re.compile(r"(^|\.)seed$")


@dataclass(frozen=True)
class Spec:
    """A kind: its title, y label, the row field, and what a missing value means."""

    title: str
    ylabel: str
    field: str
    needs: str | None = None           # what the sweep must record for it, when no row has the field
    log_default: bool = False


SPECS = {
    "learning_time": Spec("Learning time per mode", f"learning time t½: {LEARNING_TIME_DEFINITION}",
                          "learning_time"),
    "final_loss": Spec("Final excess loss", "L − L* at the last record", "final_excess_loss", log_default=True),
    "kernel_distance": Spec("NTK distance at the end", "d_K = 1 − ⟨K(0), K(t)⟩/(‖K(0)‖ ‖K(t)‖) at the last record",
                            "final_kernel_distance", needs="record.kernel: true in the sweep's base"),
    "convergence_time": Spec("Time to convergence", "t at which the run converged (‖∇L‖ ≤ tolerance)",
                             "time_to_convergence"),
    "min_test_loss": Spec("Least test loss", "L_test: least over the records (solid), at the last record (dotted)",
                          "min_test_loss", needs="data.test (or the noisy_teacher preset) in the sweep's base"),
    "early_stopping_time": Spec("Early-stopping time", "t_stop: the time of the least test loss", "early_stopping_time",
                                needs="data.test (or the noisy_teacher preset) in the sweep's base"),
}


def sweep_axes(request: Mapping[str, Any]) -> list[str]:
    """The swept parameter paths of a SweepRequest document: the grid's axes in order, else every path the explicit
    points set, in order of first appearance."""
    if request.get("grid"):
        return list(request["grid"])
    seen: dict[str, None] = {}
    for point in request.get("points") or ():
        seen.update(dict.fromkeys(point))
    return list(seen)


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def _label(v: Any) -> str:
    if is_number(v):
        return fmt(float(v))
    return v if isinstance(v, str) else json.dumps(v)


def _num(v: Any) -> float:
    return float(v) if v is not None else np.nan


def _spans_decade(values) -> bool:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    return bool(arr.size) and bool(np.all(arr > 0)) and float(arr.max()) > 10 * float(arr.min())


@dataclass
class Layout:
    """Which axis does what: x, the seeds averaged over, the axes that make lines and panels, and the panels' and
    lines' value combinations (in grid order) with the rows of each."""

    x: str
    seeds: list[str]
    line_axes: list[str]
    panel_axes: list[str]
    panels: list[tuple[str, list[int]]] = field(default_factory=list)   # (title, row indices)
    hidden_panels: int = 0

    def rule(self) -> str:
        parts = []
        if self.panel_axes:
            parts.append("one panel per " + " × ".join(self.panel_axes))
        if self.line_axes:
            parts.append("one line per " + " × ".join(self.line_axes))
        if self.seeds:
            parts.append("mean ± sd over " + " × ".join(self.seeds))
        return "; ".join(parts)


def layout(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], x: str, kind: str, aggregate: str) -> Layout:
    """The small-multiples rule (module docstring) applied to these rows."""
    values = {a: list(dict.fromkeys(_key(r["parameters"].get(a)) for r in rows if a in r["parameters"]))
              for a in axes}
    seeds = [a for a in axes if a != x and aggregate == "seed" and SEED_AXIS.search(a) and len(values[a]) > 1]
    others = [a for a in axes if a != x and a not in seeds and len(values[a]) > 1]
    line_axes: list[str] = []
    if kind != "learning_time":
        count = 1
        for a in reversed(others):          # from the last axis back: each that still fits joins the lines
            if count * len(values[a]) <= MAX_LINES:
                count *= len(values[a])
                line_axes.insert(0, a)
    panel_axes = [a for a in others if a not in line_axes]
    out = Layout(x, seeds, line_axes, panel_axes)
    panels: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        title = ", ".join(f"{a} = {_label(r['parameters'].get(a))}" for a in panel_axes)
        panels.setdefault(title, []).append(i)
    items = list(panels.items())
    out.panels, out.hidden_panels = items[:MAX_PANELS], max(0, len(items) - MAX_PANELS)
    return out


@dataclass
class XAxis:
    positions: np.ndarray        # per row
    ticks: list[str] | None      # categorical labels
    log: bool


def x_axis(rows: Sequence[Mapping[str, Any]], x: str) -> XAxis:
    raw = [r["parameters"].get(x) for r in rows]
    if all(is_number(v) for v in raw):
        xs = np.array(raw, dtype=np.float64)
        return XAxis(xs, None, _spans_decade(list(xs)))
    order: dict[str, int] = {}
    keys = [_key(v) for v in raw]
    for k in keys:
        order.setdefault(k, len(order))
    labels = {order[k]: _label(v) for k, v in zip(keys, raw, strict=True)}
    return XAxis(np.array([order[k] for k in keys], dtype=np.float64), [labels[i] for i in range(len(order))], False)


def _ok(row: Mapping[str, Any]) -> bool:
    return row.get("status") == "succeeded" and row.get("outcome") != "diverged"


def _stats(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, sd, n) over the finite values at each distinct x, sorted by x."""
    ux = np.unique(xs[np.isfinite(xs)])
    mean, sd, n = [], [], []
    for v in ux:
        y = ys[(xs == v) & np.isfinite(ys)]
        n.append(y.size)
        mean.append(float(np.mean(y)) if y.size else np.nan)
        sd.append(float(np.std(y, ddof=1)) if y.size > 1 else 0.0)
    return ux, np.array(mean), np.array(sd), np.array(n)


def _draw_series(ax: Axes, xs: np.ndarray, ys: np.ndarray, colour, seeds: bool, **style) -> Line2D | None:
    """Mean ± sd over seeds (error bars) or the points themselves, joined in x order."""
    ux, mean, sd, n = _stats(xs, ys)
    ok = np.isfinite(mean)
    if not ok.any():
        return None
    (line,) = ax.plot(ux[ok], mean[ok], color=colour, marker=style.pop("marker", "o"), ms=5, **style)
    if seeds and np.any(n[ok] > 1):
        ax.errorbar(ux[ok], mean[ok], yerr=sd[ok], fmt="none", ecolor=colour, elinewidth=1.0, capsize=3,
                    alpha=0.8)
    return line


def _edge_marks(ax: Axes, xs: np.ndarray, *, top: bool, **style) -> None:
    if xs.size:
        ax.plot(xs, np.full(xs.shape, 0.96 if top else 0.03), ls="", transform=ax.get_xaxis_transform(),
                clip_on=False, zorder=5, **style)


def figure(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], kind: str, x: str | None = None, *,
           aggregate: str = "seed", y_scale: str = "auto") -> Figure:
    """The sweep plot (module docstring). ``rows``: every point's results row as a dict (parameters decoded),
    finished or not; ``axes``: the swept paths (``sweep_axes``). Raises PlotError for an unknown kind, axis or
    aggregate, and (code not_recorded) for a kind whose value the sweep did not record."""
    if kind not in SWEEP_KINDS:
        raise PlotError(f"unknown sweep plot kind {kind!r}", field="kind", fix=f"use one of {', '.join(SWEEP_KINDS)}")
    if aggregate not in AGGREGATES:
        raise PlotError(f"unknown aggregate {aggregate!r}", field="aggregate", fix="use aggregate=seed or none")
    if not axes:
        raise PlotError("this sweep sets no parameters to plot against", field="x", fix="sweep at least one parameter")
    x = axes[0] if x is None else x
    if x not in axes:
        raise PlotError(f"{x!r} is not a swept parameter of this sweep", field="x", fix=f"use one of {', '.join(axes)}")
    spec = SPECS[kind]
    rows = [r for r in rows if x in r["parameters"]]
    done = [r for r in rows if r.get("status") == "succeeded"]
    if spec.needs and done and all(r.get(spec.field) is None for r in done):
        raise PlotError(f"the sweep's points did not record what kind={kind} draws ({spec.field})", field="kind",
                        fix=f"run the sweep again with {spec.needs}", code="not_recorded")
    lay = layout(rows, axes, x, kind, aggregate)
    xa = x_axis(rows, x)
    n_panels = len(lay.panels)
    ncols = 2 if n_panels == 4 else min(n_panels, 3 if n_panels <= 9 else 4)
    nrows = (n_panels + ncols - 1) // ncols
    fig = new_figure(3.0 + 4.4 * ncols, 1.6 + 3.5 * nrows) if n_panels > 1 else new_figure(10.0, 5.4)
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in grid[n_panels:]:
        ax.set_visible(False)
    handles, all_y = [], []
    if kind == "learning_time":
        handles = _learning_time(grid, rows, lay, xa, all_y)
    else:
        handles = _scalar(grid, rows, lay, xa, spec, kind, all_y)
    ax0 = grid[0]
    log_y = y_scale == "log" or (y_scale == "auto" and (spec.log_default or _spans_decade(all_y)))
    if log_y:
        ax0.set_yscale("log")
        log_axis(ax0.yaxis, all_y)
    if xa.log:
        ax0.set_xscale("log")
        log_axis(ax0.xaxis, xa.positions)
    if xa.ticks is not None:
        ax0.set_xticks(range(len(xa.ticks)), xa.ticks)
    else:
        swept = np.unique(xa.positions[np.isfinite(xa.positions)])
        if 0 < swept.size <= MAX_X_TICKS:             # ticks at the swept values themselves
            ax0.set_xticks(swept, [fmt(v) for v in swept])
            ax0.xaxis.set_minor_locator(NullLocator())
    for i, ax in enumerate(grid[:n_panels]):
        title, idx = lay.panels[i]
        diverged = np.array([xa.positions[j] for j in idx if rows[j].get("outcome") == "diverged"])
        _edge_marks(ax, diverged, top=True, marker="x", ms=9, mew=2.2, color="red")
        if title:
            ax.set_title(title, fontsize=9)
        ax.grid(True, which="major", **GRID)
        if i + ncols >= n_panels:
            ax.set_xlabel(x + ("  [log scale]" if xa.log else ""))
            ax.tick_params(labelbottom=True)
        if i % ncols == 0:
            ax.set_ylabel(wrap(spec.ylabel + ("  [log scale]" if log_y else ""), 44 if n_panels > 1 else 56,
                               indent=""), fontsize=9)
    n = len(rows)
    finished = sum(r.get("status") in ("succeeded", "failed") for r in rows)
    failed = sum(r.get("status") == "failed" for r in rows)
    diverged = sum(r.get("outcome") == "diverged" for r in rows)
    status = f"all {n} points finished" if finished == n else f"{finished} of {n} points finished"
    if failed:
        status += f", {failed} failed (left out)"
    notes = []
    if diverged:
        handles.append(Line2D([], [], ls="", marker="x", ms=9, mew=2.2, color="red",
                              label=f"diverged: {diverged} point{'s' if diverged > 1 else ''} (no value)"))
    if lay.rule():
        notes.append(lay.rule())
    if lay.seeds:
        counts = {len({_key(rows[j]['parameters'].get(s)) for j in range(len(rows))}) for s in lay.seeds}
        notes.append(f"error bars: ± 1 sd over {max(counts)} seeds (aggregate=none draws each seed)")
    if lay.hidden_panels:
        notes.append(f"{lay.hidden_panels} more panel{'s' if lay.hidden_panels > 1 else ''} not shown "
                     f"(first {MAX_PANELS} in grid order): plot against another x")
    title = f"{spec.title} vs {x} — {status}"
    # the legend right of the first row's last panel: constrained layout keeps it clear of every panel and the title
    legend_right(grid[min(ncols, n_panels) - 1], handles + [note(t) for t in notes])
    if n_panels > 1:
        fig.suptitle(title)
    else:
        ax0.set_title(title)
    return fig


def _learning_time(grid, rows, lay: Layout, xa: XAxis, all_y: list) -> list:
    k = max((len(r.get("learning_time") or r.get("learning_time_theory") or ()) for r in rows), default=0)
    palette = colours(k)
    models = sorted({r["theory_model"] for r in rows if r.get("theory_model") and r.get("learning_time_theory")})
    any_theory = unlearned = False
    for ax, (_, idx) in zip(grid, lay.panels, strict=False):
        ok = [j for j in idx if _ok(rows[j])]
        xs = xa.positions[ok]
        for a in range(k):
            measured = np.array([_num((rows[j].get("learning_time") or [None] * k)[a]) for j in ok])
            theory = np.array([_num((rows[j].get("learning_time_theory") or [None] * k)[a]) for j in ok])
            unlearned |= bool(np.any(np.isnan(measured) & np.isfinite(theory)))
            _draw_series(ax, xs, measured, palette[a], bool(lay.seeds), lw=1.6)
            if np.isfinite(theory).any():
                any_theory = True
                _draw_series(ax, xs, theory, palette[a], False, lw=1.3, ls=(0, (5, 3)), marker="")
            all_y += [v for v in np.concatenate([measured, theory]) if np.isfinite(v)]
    timed = [a for a in range(k) if any(np.isfinite(_num((r.get(f) or [None] * k)[a]))
                                        for r in rows for f in ("learning_time", "learning_time_theory"))]
    handles = [sample(f"mode {a + 1}", color=palette[a], lw=1.6, marker="o", ms=5) for a in timed[:MAX_LEGEND_ROWS]]
    if len(timed) > MAX_LEGEND_ROWS:
        handles.append(note(f"… and {len(timed) - MAX_LEGEND_ROWS} more modes"))
    never = [a + 1 for a in range(k) if a not in timed]
    if never:
        handles.append(note(f"mode{'s' if len(never) > 1 else ''} {', '.join(map(str, never))}: no learning time at "
                            "any point (strength 0 at the optimum, or never reached)"))
    handles.append(sample("measured (solid, markers)", lw=1.6, marker="o", ms=5))
    if any_theory:
        handles.append(sample(f"theory: {', '.join(models) or 'analytic'} (dashed)", lw=1.3, ls=(0, (5, 3))))
    else:
        handles.append(note("no analytic prediction applies"))
    if unlearned:
        handles.append(note("no marker: not learned within the run"))
    return handles


def _scalar(grid, rows, lay: Layout, xa: XAxis, spec: Spec, kind: str, all_y: list) -> list:
    line_keys = list(dict.fromkeys(", ".join(f"{a} = {_label(r['parameters'].get(a))}" for a in lay.line_axes)
                                   for r in rows))
    palette = colours(max(len(line_keys), 1))
    handles: dict[str, Any] = {}
    zero = missing = 0
    for ax, (_, idx) in zip(grid, lay.panels, strict=False):
        for c, key in enumerate(line_keys):
            sel = [j for j in idx if _ok(rows[j]) and ", ".join(
                f"{a} = {_label(rows[j]['parameters'].get(a))}" for a in lay.line_axes) == key]
            if not sel:
                continue
            xs = xa.positions[sel]
            ys = np.array([_num(rows[j].get(spec.field)) for j in sel])
            if kind == "final_loss":                  # L − L* ≤ 0: the optimum to round-off, a ▼ on the bottom edge
                at_zero = np.isfinite(ys) & (ys <= 0)
                zero += int(at_zero.sum())
                _edge_marks(ax, xs[at_zero], top=False, marker="v", ms=8, color=palette[c])
                ys = np.where(at_zero, np.nan, ys)
            if kind == "convergence_time":             # runs that did not converge within their time: ▲ on top
                never = ~np.isfinite(ys)
                missing += int(never.sum())
                _edge_marks(ax, xs[never], top=True, marker="^", ms=7, color=palette[c], mfc="none")
            line = _draw_series(ax, xs, ys, palette[c], bool(lay.seeds), lw=1.6)
            if kind == "min_test_loss":
                final = np.array([_num(rows[j].get("final_test_loss")) for j in sel])
                _draw_series(ax, xs, final, palette[c], False, lw=1.2, ls=":", marker="s", mfc="none")
                all_y += [v for v in final if np.isfinite(v)]
            all_y += [v for v in ys if np.isfinite(v)]
            if line is not None and key and key not in handles:
                handles[key] = sample(key, color=palette[c], lw=1.6, marker="o", ms=5)
    out = list(handles.values())[:MAX_LEGEND_ROWS]
    if kind == "min_test_loss":
        out += [sample("least L_test over the records", lw=1.6, marker="o", ms=5),
                sample("L_test at the last record", lw=1.2, ls=":", marker="s", mfc="none")]
    if zero:
        out.append(Line2D([], [], ls="", marker="v", ms=8, color="0.3",
                          label=f"L − L* ≤ 0: the optimum to round-off ({zero} point{'s' if zero > 1 else ''})"))
    if missing:
        out.append(Line2D([], [], ls="", marker="^", ms=7, color="0.3", mfc="none",
                          label=f"did not converge within the run ({missing} point{'s' if missing > 1 else ''})"))
    return out
