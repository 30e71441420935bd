"""kind=modes: the mode strengths u_α(t) = u_αᵀ W(t) v_α (solid, translucent), the theory's prediction (dashed, same
colour), each mode's strength at the optimum u*_α (dotted) and its learning time t½ (●).

Modes with a singular value of 0 (to round-off) are left out and counted in the legend: they have nothing to learn.
Modes with one singular value (the hierarchy's repeated splits) share a colour and a legend row. The legend says
what the strengths tend to: u*_α = s_α/c when Σ11 = c·I (one-hot items with mean statistics have c = 1/P, so the
hierarchy's modes level off at P·s), u*_α = s_α when Σ11 = I.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from service.schemas.trajectory import LEARNING_TIME_DEFINITION

from .common import Context, Options, array, fmt, method_name, outcome_note
from .render import new_figure
from .style import GRID, MAX_LEGEND_ROWS, colours, legend_right, note, sample
from .timing import apply_time_axis, choose_time_scale, learning_times, mode_list, settle_time, shown

SPARSE_GAP = 0.04           # a record interval wider than this fraction of the time axis around a t½: records marked
ZERO_S_RTOL = 1e-9          # a singular value at or below this fraction of the largest is 0
DEGENERATE_RTOL = 1e-9      # singular values this close (relative to the largest) are one


def mode_groups(s: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """(groups of modes with one singular value, in order; the modes with s = 0 to round-off)."""
    s_max = float(np.max(s, initial=0.0))
    zero = [a for a in range(s.size) if not s[a] > ZERO_S_RTOL * s_max]
    groups: list[list[int]] = []
    for a in range(s.size):
        if a in zero:
            continue
        if groups and abs(s[groups[-1][0]] - s[a]) <= DEGENERATE_RTOL * s_max:
            groups[-1].append(a)
        else:
            groups.append([a])
    return groups, zero


def asymptote_note(s: np.ndarray, u_star: np.ndarray | None) -> str | None:
    """What the strengths tend to, in words: u* = s/c with the c of Σ11 = c·I when the ratio is one number."""
    if u_star is None:
        return None
    ok = (s > ZERO_S_RTOL * float(np.max(s, initial=0.0))) & np.isfinite(u_star) & (np.abs(u_star) > 0)
    if not ok.any():
        return None
    ratio = s[ok] / u_star[ok]
    c = float(np.median(ratio))
    if np.all(np.abs(ratio - c) <= 1e-6 * abs(c)):
        if abs(c - 1.0) <= 1e-9:
            return "u*_α = s_α: the strength at the optimum (Σ11 = I)"
        inv = 1.0 / c
        c_text = f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-9 * inv else fmt(c)
        return f"u*_α = s_α/c: Σ11 = c·I with c = {c_text}, so strengths level off at {fmt(1 / c)}·s_α"
    return "u*_α = u_αᵀ W* v_α: the strength at the optimum W* (Σ11 is not c·I: not s_α/c)"


def coarse_records(time: np.ndarray, learning_times: np.ndarray, scale: str) -> bool:
    """Whether the record interval around some learning time spans more than SPARSE_GAP of the time axis."""
    t = np.asarray(time, dtype=np.float64)
    lt = np.asarray(learning_times, dtype=np.float64)
    lt = lt[np.isfinite(lt)]
    if t.size < 2 or not lt.size:
        return False
    pos = np.log(t) if scale == "log" else t
    width = float(pos[-1] - pos[0]) or 1.0
    for v in lt[(lt > t[0]) & (lt < t[-1])]:
        i = int(np.searchsorted(t, v))
        if (pos[i] - pos[i - 1]) / width > SPARSE_GAP:
            return True
    return False


def figure(doc: Mapping[str, Any], options: Options, context: Context) -> Figure:
    modes = doc["modes"]
    time = array(doc["time"])
    strength = array(modes["strength"]).reshape(len(time), -1)
    theory = array(modes["theory"]).reshape(len(time), -1) if modes.get("theory") is not None else None
    k = strength.shape[1]
    # a running simulation's records so far carry the strengths only (partial: true)
    s = array(modes["singular_values"]) if modes.get("singular_values") is not None else np.full(k, np.nan)
    u_star = array(modes["optimum_strength"]) if modes.get("optimum_strength") is not None else None
    if u_star is not None:   # the learning times' rule: a strength at the optimum ≤ 1e-9 of the largest is 0
        u_star = np.where(np.abs(u_star) <= ZERO_S_RTOL * np.nanmax(np.abs(u_star), initial=0.0), 0.0, u_star)
    lt = learning_times(doc)
    groups, zero = mode_groups(s) if np.isfinite(s).all() else ([[a] for a in range(k)], [])
    drawn = [a for g in groups for a in g]
    scale, time_note = choose_time_scale(options.time_scale, time,
                                         settle_time(time, strength[:, drawn]) if drawn else None, lt)
    keep = shown(time, scale)
    y_log = options.y_scale == "log"
    # records far apart where a mode is learned: mark them, so that a straight segment is not read as the dynamics
    sparse = coarse_records(time[keep], lt[[a for a in drawn if a < lt.size]], scale)
    dots = {"marker": ".", "ms": 5} if sparse else {}
    fig = new_figure(11.5, 5.6)
    ax = fig.add_subplot()
    palette = colours(len(groups))
    handles, dropped = [], 0
    for g, members in enumerate(groups):
        colour = palette[g]
        for a in members:
            y = strength[:, a]
            ok = keep & np.isfinite(y) & ((y > 0) if y_log else True)
            dropped += int(np.sum(keep & np.isfinite(y) & ~ok))
            ax.plot(time[ok], y[ok], color=colour, lw=2.6, alpha=0.55, zorder=2, **dots)
            if theory is not None:
                yt = theory[:, a]
                okt = keep & np.isfinite(yt) & ((yt > 0) if y_log else True)
                ax.plot(time[okt], yt[okt], color=colour, lw=1.3, ls=(0, (4, 3)), zorder=3)
            if a < lt.size and np.isfinite(lt[a]) and u_star is not None and (lt[a] > 0 or scale != "log"):
                ax.plot([lt[a]], [u_star[a] / 2], "o", color=colour, ms=5, mec="white", mew=0.8, zorder=4)
        if u_star is not None and np.isfinite(u_star[members[0]]) and (u_star[members[0]] > 0 or not y_log):
            ax.axhline(u_star[members[0]], color=colour, ls=":", lw=0.9, alpha=0.8, zorder=1)
        if g < MAX_LEGEND_ROWS:
            handles.append(sample(_group_label(members, s, u_star), color=colour, lw=2.6, alpha=0.55))
    if len(groups) > MAX_LEGEND_ROWS:
        handles.append(note(f"… and {len(groups) - MAX_LEGEND_ROWS} more singular values"))
    styles = [sample(f"solid: simulated ({method_name(doc)})", lw=2.6, alpha=0.55)]
    model = modes.get("theory_model")
    if theory is not None:
        qualifier = "exact" if modes.get("theory_exact") else "approximate"
        styles.append(sample(f"dashed: theory, {model} ({qualifier})", lw=1.3, ls=(0, (4, 3))))
    else:
        styles.append(note("no analytic prediction applies to this setting"))
    if u_star is not None:
        styles.append(sample("dotted: u*_α, the strength at the optimum", ls=":", lw=0.9))
        styles.append(sample(f"t½: {LEARNING_TIME_DEFINITION}", ls="", marker="o", ms=5))
    notes = [n for n in (asymptote_note(s, u_star), time_note) if n]
    if doc.get("partial"):
        notes.insert(0, f"partial: the records up to t = {fmt(time[-1], 4)} ({outcome_note(doc)})")
    if sparse:
        notes.append("dots: the records, far apart where some mode is learned; the lines between them are "
                     "straight, t½ (●) is measured in the run itself")
    first = float(time[keep][0]) if keep.any() else 0.0
    early = [a for a in drawn if a < lt.size and np.isfinite(lt[a]) and lt[a] < first]
    if early:
        notes.append(f"t½ of {mode_list(early)} = " + ", ".join(fmt(lt[a], 3) for a in early) +
                     f": before the first record shown (t = {fmt(first, 3)})")
    if zero:
        notes.append(f"{mode_list(zero)} with s = 0 not shown: nothing to learn")
    if dropped:
        notes.append(f"{dropped} values ≤ 0 not shown (log scale)")
    legend_right(ax, handles + styles + [note(n) for n in notes], title="modes of Σ31 = U S Vᵀ")
    if y_log:
        ax.set_yscale("log")
    apply_time_axis(ax, doc, scale, time)
    ax.set_ylabel("mode strength u_α(t) = u_αᵀ W(t) v_α" + ("  [log scale]" if y_log else ""))
    subtitle = f"theory: {model}" if theory is not None else "no theory"
    ax.set_title(f"Mode strengths — {method_name(doc)} ({outcome_note(doc)}); {subtitle}")
    ax.grid(True, **GRID)
    return fig


def _group_label(members: list[int], s: np.ndarray, u_star: np.ndarray | None) -> str:
    a = members[0]
    if not np.isfinite(s[a]):
        return mode_list(members)
    label = f"{mode_list(members)}: s = {fmt(s[a])}"
    if len(members) > 1:
        label += f" (×{len(members)})"
    if u_star is not None and np.isfinite(u_star[a]):
        label += f", u* = {fmt(u_star[a])}" if abs(u_star[a]) > 0 else ", u* = 0 (beyond the bottleneck)"
    return label
