"""kind=kernel: how far the neural tangent kernel moves, and which side of the network moves it (needs record.kernel).

The distance of a matrix A from its start is d_A(t) = 1 − ⟨A(0), A(t)⟩_F / (‖A(0)‖_F ‖A(t)‖_F): 0 while A keeps its
direction. It is drawn for the kernel K = Σ_l Q_l ⊗ P_(l−1) on the input basis (black, on top) and for each hidden
layer's Grams P_h (input side) and Q_h (output side). The legend gives each term's share of Σ_l ‖Q_l ⊗ P_(l−1)‖_F at
the last record: a Gram that moves a lot in a term that carries little of K leaves K where it was (the lazy result).

y_scale=auto is log when the kernel distance stays below LAZY_DISTANCE, so that a lazy run's d_K ≈ 1e-4 is a curve
and not a line on the x axis (values at the round-off of the cosine, ≤ ROUNDOFF, are left out); linear from 0
otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .common import Context, Options, PlotError, array, fmt, method_name, outcome_note
from .render import new_figure
from .style import GRID, legend_right, log_axis, note
from .timing import apply_time_axis, auto_scale, shown

LAZY_DISTANCE = 0.05
ROUNDOFF = 1e-13


def gram_distance(stack: np.ndarray) -> np.ndarray:
    """d_A(t) per record for a stack of matrices (T, n, n)."""
    flat = stack.reshape(len(stack), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - flat @ flat[0] / (np.linalg.norm(flat, axis=1) * np.linalg.norm(flat[0]))


def term_shares(inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """‖Q_l ⊗ P_(l−1)‖_F / Σ_m ‖Q_m ⊗ P_(m−1)‖_F for l = 1 … D at one record, with P_0 = I_in, Q_D = I_out
    (‖A ⊗ B‖_F = ‖A‖_F ‖B‖_F). ``inputs`` (D−1, n_in, n_in) = P_1 … P_(D−1), ``outputs`` = Q_1 … Q_(D−1)."""
    hidden = inputs.shape[0]
    p_norms = [np.sqrt(inputs.shape[1])] + [float(np.linalg.norm(inputs[h])) for h in range(hidden)]
    q_norms = [float(np.linalg.norm(outputs[h])) for h in range(hidden)] + [np.sqrt(outputs.shape[1])]
    terms = np.array([q_norms[l] * p_norms[l] for l in range(hidden + 1)])
    total = terms.sum()
    return terms / total if total > 0 else terms


def _names(depth: int, h: int) -> tuple[str, str]:
    """(P_h, Q_h) with their definitions, readable for two layers."""
    if depth == 2:
        return "P_1 = W21ᵀW21 (input side)", "Q_1 = W32W32ᵀ (output side)"
    def chain(hi: int, lo: int) -> tuple[str, bool]:
        if hi == lo:
            return f"W_{hi}", True
        return (f"W_{hi}W_{lo}" if hi == lo + 1 else f"W_{hi}⋯W_{lo}"), False

    p, p_single = chain(h, 1)
    q, q_single = chain(depth, h + 1)
    p_text = f"{p}ᵀ{p}" if p_single else f"({p})ᵀ({p})"
    q_text = f"{q}{q}ᵀ" if q_single else f"({q})({q})ᵀ"
    return f"P_{h} = {p_text} (input side)", f"Q_{h} = {q_text} (output side)"


def _term(depth: int, l: int) -> str:
    q = "I" if l == depth else f"Q_{l}"
    p = "I" if l == 1 else f"P_{l - 1}"
    return f"{q}⊗{p}"


def figure(doc: Mapping[str, Any], options: Options, context: Context) -> Figure:
    if doc.get("kernel_distance") is None or doc.get("kernel") is None:
        raise PlotError("this simulation did not record the neural tangent kernel", field="kind",
                        fix="run the simulation again with record.kernel set to true", code="not_recorded")
    time = array(doc["time"])
    d_k = array(doc["kernel_distance"])
    inputs = array(doc["kernel"]["input_grams"])       # (T, D−1, n_in, n_in)
    outputs = array(doc["kernel"]["output_grams"])     # (T, D−1, n_out, n_out)
    hidden = inputs.shape[1] if inputs.ndim == 4 else 0
    depth = hidden + 1
    scale, time_note = auto_scale(doc, options.time_scale, time)
    keep = shown(time, scale)
    finite = d_k[np.isfinite(d_k)]
    lazy = bool(finite.size) and float(np.max(finite)) < LAZY_DISTANCE
    y_log = options.y_scale == "log" or (options.y_scale == "auto" and lazy and bool(np.any(finite > ROUNDOFF)))
    fig = new_figure(10.5, 5.4)
    ax = fig.add_subplot()

    def plot(y, **style):
        ok = keep & np.isfinite(y) & ((y > ROUNDOFF) if y_log else True)
        return ax.plot(time[ok], y[ok], **style)[0]

    handles = [plot(d_k, color="k", lw=2.4, zorder=5, label="d_K: the NTK, K = Σ_l Q_l ⊗ P_(l−1) on the input basis")]
    shares = term_shares(inputs[-1], outputs[-1]) if hidden else np.ones(1)
    for h in range(hidden):
        p_name, q_name = _names(depth, h + 1)
        colour = f"C{h}"
        handles.append(plot(gram_distance(inputs[:, h]), color=colour, ls="--", lw=1.4, alpha=0.8, label=f"d of {p_name}"))
        handles.append(plot(gram_distance(outputs[:, h]), color=colour, ls=":", lw=1.6, alpha=0.8, label=f"d of {q_name}"))
    end = float(d_k[np.isfinite(d_k)][-1]) if finite.size else float("nan")
    verdict = ("≈ 0: lazy, the kernel keeps its direction" if end < 0.01 else
               "the kernel turned: rich, features were learned")
    notes = ["d_A(t) = 1 − ⟨A(0), A(t)⟩_F / (‖A(0)‖_F ‖A(t)‖_F): 0 while A keeps its direction",
             f"d_K at the last record = {fmt(end, 3)} ({verdict})",
             "share of Σ_l ‖Q_l ⊗ P_(l−1)‖ at the last record: " +
             ", ".join(f"{_term(depth, l + 1)} {shares[l]:.1%}" for l in range(depth)),
             "P_0 = I, Q_D = I: the input and output identities"]
    if time_note:
        notes.append(time_note)
    if y_log:
        ax.set_yscale("log")
        log_axis(ax.yaxis, [v for hnd in handles for v in np.ravel(hnd.get_ydata())])
        notes.append(f"log scale: values ≤ {ROUNDOFF:g} (round-off, and d = 0 at t = 0) not shown")
    else:
        ax.set_ylim(bottom=0.0)
    apply_time_axis(ax, doc, scale, time)
    ax.set_ylabel("distance from the start d_A(t), A = K, P_h, Q_h" + ("  [log scale]" if y_log else ""))
    ax.set_title(f"Neural tangent kernel over time — {method_name(doc)} ({outcome_note(doc)})")
    ax.grid(True, which="major", **GRID)
    legend_right(ax, handles + [note(n) for n in notes])
    return fig
