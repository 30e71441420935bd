"""Several runs in one figure (GET /v1/plots/compare.svg): lazy against rich, GD at several learning rates against
the theory. One colour per run, named in the legend by the run's label (its name and tags, else its id).

    loss    each run's loss L(t) (L − L* for all runs when one of them does not know Σ33), test loss dashed
    modes   each run's mode strengths (solid) and theory (dashed), in the run's colour
    kernel  each run's NTK distance d_K(t); log y when some run stays lazy (d_K < 0.05), so lazy and rich both show

The time axis is shared: log when the run that settles first does so early (``timing.choose_time_scale`` on the
union of the records).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .common import Context, Options, PlotError, array, method_name
from .kernel import LAZY_DISTANCE, ROUNDOFF
from .loss import roundoff_floor
from .modes import mode_groups
from .render import new_figure
from .style import GRID, colours, legend_right, log_axis, note, sample
from .timing import apply_time_axis, choose_time_scale, mode_strengths, settle_time, shown

COMPARE_KINDS = ("loss", "modes", "kernel")
MAX_RUNS = 8


def figure(runs: Sequence[tuple[str, Mapping[str, Any], Context]], kind: str, options: Options) -> Figure:
    """``runs``: (label, trajectory document, context) per run, in legend order."""
    if kind not in COMPARE_KINDS:
        raise PlotError(f"unknown comparison kind {kind!r}", field="kind", fix=f"use one of {', '.join(COMPARE_KINDS)}")
    if not 1 <= len(runs) <= MAX_RUNS:
        raise PlotError(f"{len(runs)} simulations given; a comparison draws 1 to {MAX_RUNS}", field="simulation",
                        fix=f"give between 1 and {MAX_RUNS} simulation ids: simulation=<id>&simulation=<id>")
    if kind == "kernel":
        missing = [label for label, doc, _ in runs if doc.get("kernel_distance") is None]
        if missing:
            raise PlotError(f"{', '.join(missing)} did not record the neural tangent kernel", field="kind",
                            fix="run them again with record.kernel set to true", code="not_recorded")
    times = [array(doc["time"]) for _, doc, _ in runs]
    settles = [s for s in (settle_time(t, mode_strengths(doc)) for t, (_, doc, _) in zip(times, runs, strict=True))
               if s is not None]
    union = np.unique(np.concatenate(times))
    scale, time_note = choose_time_scale(options.time_scale, union, min(settles) if settles else None)
    fig = new_figure(10.5, 5.4)
    ax = fig.add_subplot()
    palette = colours(len(runs))
    handles, notes, all_y = [], [], []
    y_log = False
    if kind == "loss":
        known = all(doc.get("loss") is not None for _, doc, _ in runs)
        y_log = options.y_scale != "linear"
        for (label, doc, context), t, colour in zip(runs, times, palette, strict=True):
            keep = shown(t, scale)
            y = array(doc["loss"] if known else doc["excess_loss"])
            floor = roundoff_floor(doc, context) if y_log else -np.inf
            ok = keep & np.isfinite(y) & (y > max(floor, 0.0) if y_log else True)
            handles.append(ax.plot(t[ok], y[ok], color=colour, lw=1.8, label=label)[0])
            all_y += list(y[ok])
            if doc.get("test_loss") is not None:
                yt = array(doc["test_loss"])
                okt = keep & np.isfinite(yt) & ((yt > 0) if y_log else True)
                ax.plot(t[okt], yt[okt], color=colour, lw=1.4, ls="--")
                all_y += list(yt[okt])
        handles.append(sample("solid: training loss L" if known else "solid: excess loss L − L*", lw=1.8))
        if any(doc.get("test_loss") is not None for _, doc, _ in runs):
            handles.append(sample("dashed: test loss L_test", lw=1.4, ls="--"))
        notes.append("values below each run's round-off floor not drawn")
        ylabel = "loss L" if known else "excess loss L − L*  (Σ33 unknown for some run)"
    elif kind == "modes":
        any_theory = False
        for (label, doc, _), t, colour in zip(runs, times, palette, strict=True):
            keep = shown(t, scale)
            u = mode_strengths(doc)
            groups, _ = mode_groups(array(doc["modes"]["singular_values"]))
            theory = doc["modes"].get("theory")
            th = array(theory).reshape(len(t), -1) if theory is not None else None
            for a in (a for g in groups for a in g):
                ax.plot(t[keep], u[keep, a], color=colour, lw=2.2, alpha=0.6)
                if th is not None:
                    any_theory = True
                    ax.plot(t[keep], th[keep, a], color=colour, lw=1.1, ls=(0, (4, 3)))
            handles.append(sample(f"{label} ({method_name(doc)})", color=colour, lw=2.2, alpha=0.6))
        handles.append(sample("solid: simulated mode strengths", lw=2.2, alpha=0.6))
        if any_theory:
            handles.append(sample("dashed: each run's theory", lw=1.1, ls=(0, (4, 3))))
        notes.append("modes with s = 0 not shown")
        ylabel = "mode strength u_α(t) = u_αᵀ W(t) v_α  (Σ31 = U S Vᵀ)"
    else:
        maxima = []
        for (label, doc, _), t, colour in zip(runs, times, palette, strict=True):
            d = array(doc["kernel_distance"])
            finite = d[np.isfinite(d)]
            maxima.append(float(np.max(finite)) if finite.size else 0.0)
        y_log = options.y_scale == "log" or (options.y_scale == "auto" and min(maxima) < LAZY_DISTANCE)
        for (label, doc, _), t, colour in zip(runs, times, palette, strict=True):
            keep = shown(t, scale)
            d = array(doc["kernel_distance"])
            ok = keep & np.isfinite(d) & ((d > ROUNDOFF) if y_log else True)
            end = d[np.isfinite(d)][-1] if np.isfinite(d).any() else np.nan
            handles.append(ax.plot(t[ok], d[ok], color=colour, lw=2.0, label=f"{label}: d_K(end) = {end:.3g}")[0])
            all_y += list(d[ok])
        notes.append("d_K = 1 − ⟨K(0), K(t)⟩/(‖K(0)‖ ‖K(t)‖), K the NTK on the input basis: 0 lazy, large rich")
        if y_log:
            notes.append(f"log scale: values ≤ {ROUNDOFF:g} not shown")
        else:
            ax.set_ylim(bottom=0.0)
        ylabel = "NTK distance from the start d_K(t)"
    if y_log:
        ax.set_yscale("log")
        log_axis(ax.yaxis, all_y)
    if time_note:
        notes.append(time_note)
    methods = {doc.get("method") for _, doc, _ in runs}
    apply_time_axis(ax, {"method": methods.pop() if len(methods) == 1 else None}, scale, union)
    ax.set_ylabel(ylabel + ("  [log scale]" if y_log else ""))
    ax.set_title(f"Comparison of {len(runs)} runs — {kind}")
    ax.grid(True, which="major", **GRID)
    legend_right(ax, handles + [note(n) for n in notes], title="runs")
    return fig
