"""Several runs in one figure (GET /v1/plots/compare.svg): lazy against rich, GD at several learning rates against
the theory. One colour per run, named in the legend by the run's label (its name and tags, else its id).

    loss       each run's loss L(t) (L − L* for all runs when one of them does not know Σ33), test loss dashed
    modes      each run's mode strengths (solid) and theory (dashed), in the run's colour
    kernel     each run's NTK distance d_K(t); log y when some run stays lazy (d_K < 0.05), so lazy and rich both show
    sharpness  each run's sharpness S(t) = λ_1 (solid) and its edge of stability 2/η (dashed), in the run's colour:
               Cohen et al. 2021's figure, GD at several step sizes each sharpening to its own 2/η (a flow run has none)

The time axis is shared: log when the run that settles first does so early (``timing.choose_time_scale`` on the
union of the records).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .common import Context, Options, PlotError, array, fmt, method_name
from .kernel import LAZY_DISTANCE, ROUNDOFF
from .loss import roundoff_floor
from .modes import mode_groups
from .render import new_figure
from .sharpness import THRESHOLD_REACH, eigenvalues, first_crossing, step_size_note, threshold_formula
from .style import GRID, colours, legend_right, log_axis, note, sample, wrap
from .timing import apply_time_axis, choose_time_scale, mode_strengths, settle_time, shown

COMPARE_KINDS = ("loss", "modes", "kernel", "sharpness")
MAX_RUNS = 8


def figure(runs: Sequence[tuple[str, Mapping[str, Any], Context]], kind: str, options: Options) -> Figure:
    """``runs``: (label, trajectory document, context) per run, in legend order."""
    if kind not in COMPARE_KINDS:
        raise PlotError(f"unknown comparison kind {kind!r}", field="kind", fix=f"use one of {', '.join(COMPARE_KINDS)}")
    if not 1 <= len(runs) <= MAX_RUNS:
        raise PlotError(f"{len(runs)} simulations given; a comparison draws 1 to {MAX_RUNS}", field="simulation",
                        fix=f"give between 1 and {MAX_RUNS} simulation ids: simulation=<id>&simulation=<id>")
    recorded = {"kernel": ("kernel_distance", "the neural tangent kernel", "record.kernel set to true"),
                "sharpness": ("sharpness", "the sharpness (the top Hessian eigenvalues)", "record.sharpness set to true")}
    if kind in recorded:
        member, what, setting = recorded[kind]
        missing = [label for label, doc, _ in runs if doc.get(member) is None]
        if missing:
            raise PlotError(f"{', '.join(missing)} did not record {what}", field="kind",
                            fix=f"run them again with {setting}", code="not_recorded")
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
    elif kind == "sharpness":
        ylabel, y_log = _sharpness(ax, runs, times, palette, scale, options, handles, notes, all_y)
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


def _sharpness(ax, runs, times, palette, scale: str, options: Options, handles: list, notes: list, all_y: list
               ) -> tuple[str, bool]:
    """Each run's S(t) = λ_1 solid and its threshold 2/η dashed, both in the run's colour; a threshold far above every
    sharpness (below ``THRESHOLD_REACH`` of it) is named in the legend instead of squashing the curves. Returns the
    y label and whether the axis is logarithmic."""
    y_log = options.y_scale == "log"
    top, dropped, drawn = 0.0, 0, False
    # below its edge GD follows the flow, so runs overlap: each drawn thinner than the one before stays visible
    widths = np.linspace(6.4, 1.6, len(runs)) if len(runs) > 1 else [2.0]
    for i, ((label, doc, context), t, colour) in enumerate(zip(runs, times, palette, strict=True)):
        keep = shown(t, scale)
        s = eigenvalues(doc)[:, 0]
        ok = keep & np.isfinite(s) & ((s > 0) if y_log else True)
        dropped += int(np.sum(keep & np.isfinite(s) & ~ok))
        reached = float(np.nanmax(s)) if np.isfinite(s).any() else 0.0
        threshold = doc.get("sharpness_threshold")
        formula = threshold_formula(context.training)
        if threshold is None or not np.isfinite(threshold):
            fate = "no step size, no edge of stability"
        else:
            crossing = first_crossing(t, s, float(threshold))
            fate = (f"{formula} = {fmt(float(threshold))}, reached at t = {fmt(crossing, 4)}" if crossing is not None
                    else f"{formula} = {fmt(float(threshold))}, S peaks at {reached / float(threshold):.2g} of it")
            if reached >= THRESHOLD_REACH * float(threshold):
                ax.axhline(float(threshold), color=colour, ls="--", lw=1.3, zorder=2, gid=f"threshold-{i}")
                top, drawn = max(top, float(threshold)), True
            else:
                fate += " (above the axis)"
        # the method and step size, unless the run's label says them already ("GD η = 0.1", "gradient flow")
        unsaid = [part for part in [method_name(doc), *step_size_note(doc, context.training).split(", ")[1:]]
                  if part not in label]
        name = f"{label} ({', '.join(unsaid)})" if unsaid else label
        (line,) = ax.plot(t[ok], s[ok], color=colour, lw=widths[i], zorder=3, gid=f"sharpness-{i}",
                          label=wrap(f"{name}: {fate}"))
        handles.append(line)
        all_y += list(s[ok])
        top = max(top, reached)
    handles.append(sample("solid: the sharpness S(t) = λ_1, the top Hessian eigenvalue of L (runs that coincide: "
                          "the later drawn thinner, inside)", lw=2.0))
    if drawn:
        handles.append(sample("dashed: each run's edge of stability (2/η for plain GD; Cohen et al. 2021)", lw=1.3,
                              ls="--"))
    if dropped:
        notes.append(f"{dropped} values ≤ 0 not shown (log scale)")
    if not y_log:
        lowest = min(all_y, default=0.0)
        ax.set_ylim(bottom=min(0.0, 1.05 * lowest), top=1.08 * top if top > 0 else None)
    return "sharpness S(t) = λ_1 of the Hessian of L", y_log
