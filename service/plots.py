"""Plots of a trajectory document (the JSON the API serves) as SVG or PNG bytes, without any web framework.

    svg = render_plot(document, "modes", log_time=True)               # bytes of an SVG file
    png = render_plot(document, "similarity", times=[0, 5, 40], fmt="png")

Kinds:
    loss        L(t) on a log axis (or L − L* when Σ33 is unknown, said on the axis); the optimum L* dotted; with
                data.test the test loss and its minimum (the early-stopping point), and the loss theory dashed.
    modes       mode strengths u_α(t) = u_αᵀ W(t) v_α (solid) and the analytic prediction (dashed, same colour),
                the theory model named in the title and legend, "(approximate)" when its assumptions hold only
                approximately.
    product     heatmaps of the network map W(t) at chosen times (nearest record) next to the optimum W*.
    similarity  the hidden-layer item similarity RSM = W21ᵀW21 at chosen times (when it was recorded).
    kernel      the NTK's kernel distance 1 − cos(K(0), K(t)) over time (solid), and the same distance for each
                hidden layer's input-side Gram P_h and output-side Gram Q_h (dashed, dotted): which side moves
                (when record.kernel).

Rendering uses ``matplotlib.figure.Figure`` directly (never pyplot's global figure manager) on the headless
Agg backend, and one lock: matplotlib documents that it is not thread-safe, and rendering holds the GIL
anyway, so serialising renders costs the thread pool nothing measurable. Text stays text in the SVG
(svg.fonttype "none"): smaller files that are searchable and accessible.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

# Headless, explicitly: nothing here uses pyplot, but a server must never pick an interactive backend.
matplotlib.use("Agg")

KINDS = ("loss", "modes", "product", "similarity", "kernel")
FORMATS = {"svg": "image/svg+xml", "png": "image/png"}
MAX_TIMES = 8                 # panels of a product / similarity plot
MAX_LEGEND_MODES = 10         # past this many modes the legend names the first ones and "…"
MAX_TICK_LABELS = 32          # item / feature names are written on the axes up to this many
DEFAULT_SIMILARITY_PANELS = 4

_RC = {"svg.fonttype": "none", "font.size": 10, "axes.titlesize": 11, "figure.dpi": 100}
_LOCK = threading.Lock()


class PlotError(ValueError):
    """A plot that cannot be drawn as asked. ``code``: "not_recorded" (the data is not in this trajectory,
    the caller should rerun the simulation) or "invalid" (a query parameter out of its domain)."""

    def __init__(self, message: str, *, field: str, fix: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.message, self.field, self.fix, self.code = message, field, fix, code


# ------------------------------------------------------------------------------------------------
# helpers


def _array(value: Any) -> np.ndarray:
    """JSON lists -> float64 array; null (a non-finite value in the run) -> NaN."""
    return np.array(value, dtype=np.float64)


def nearest_records(time: np.ndarray, wanted: Sequence[float]) -> list[int]:
    """Index of the record nearest each wanted time (ties: the earlier record), duplicates removed, sorted."""
    time = np.asarray(time, dtype=np.float64)
    return sorted({int(np.argmin(np.abs(time - t))) for t in wanted})


def _time_label(doc: Mapping[str, Any], log_time: bool) -> str:
    method = doc.get("method")
    label = "time t = η·step (learning rate × steps)" if method == "gd" else \
        "time t (gradient-flow time; t = η·step for GD)"
    return label + ("  [log scale; t = 0 not shown]" if log_time else "")


def _method_name(doc: Mapping[str, Any]) -> str:
    return {"gd": "gradient descent", "flow": "gradient flow", "exact": "exact solution"}.get(
        str(doc.get("method")), str(doc.get("method")))


def _outcome_note(doc: Mapping[str, Any]) -> str:
    if doc.get("outcome") == "diverged":
        step = doc.get("diverged_at_step")
        return "diverged" + (f" at step {step}" if step is not None else "") + "; recorded until then"
    return str(doc.get("outcome", ""))


def _time_mask(time: np.ndarray, log_time: bool) -> np.ndarray:
    return (time > 0) if log_time else np.ones(time.shape, dtype=bool)


def _fmt_time(t: float) -> str:
    return f"{t:.4g}"


def _mode_colours(k: int) -> list:
    if k <= 10:
        return [colormaps["tab10"](i) for i in range(k)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, k)]


def _save(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    # metadata Date None: the same trajectory renders to the same bytes (cacheable, diffable).
    fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None, bbox_inches="tight")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# loss


def _plot_loss(fig: Figure, doc: Mapping[str, Any], log_time: bool) -> None:
    ax = fig.add_subplot()
    time = _array(doc["time"])
    known = doc.get("loss") is not None
    optimum = (doc.get("optimum") or {}).get("loss")
    if known:
        y = _array(doc["loss"])
        ylabel = "loss L = (1/N) Σ ‖y − W x‖²  [log scale]"
        name = "loss L(t)"
    else:
        y = _array(doc["excess_loss"])
        ylabel = "excess loss L − L*  [log scale]\n(L itself is unknown: Σ33 was not given)"
        name = "excess loss L(t) − L*"
    keep = _time_mask(time, log_time) & np.isfinite(y)
    positive = keep & (y > 0)
    dropped = int(np.sum(keep & ~positive))
    if positive.any():
        ax.plot(time[positive], y[positive], color="C0", lw=1.8, label=name)
        ax.set_yscale("log")
        if np.max(y[positive]) < 100 * np.min(y[positive]):
            # Under two decades the default labels read "4×10⁰"; plain numbers on the minor ticks are clearer.
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.plot(time[keep], y[keep], color="C0", lw=1.8, label=name)
        ylabel = ylabel.replace("  [log scale]", "  [linear: no positive value to put on a log scale]")
    _plot_test_loss(ax, doc, time, log_time, known)
    rank = (doc.get("optimum") or {}).get("rank")
    if known and optimum is not None:
        # L* = tr Σ33 − Σ σ² cancels to round-off for a realisable task: call that 0 rather than draw 1e-16.
        scale = float(np.nanmax(np.abs(y))) if np.isfinite(y).any() else 0.0
        if optimum > 1e-10 * scale:
            ax.axhline(optimum, color="0.3", ls=":", lw=1.2, label=f"optimum L* = {optimum:.4g} (rank {rank})")
        else:
            ax.plot([], [], " ", label=f"optimum L* = 0 (to round-off; rank {rank})")
    if dropped:
        # Say so rather than silently clip: values ≤ 0 (an exact fit, or round-off below L*) have no log.
        ax.plot([], [], " ", label=f"{dropped} value{'s' if dropped > 1 else ''} ≤ 0 not shown (log scale)")
    if log_time:
        ax.set_xscale("log")
    ax.set_xlabel(_time_label(doc, log_time))
    ax.set_ylabel(ylabel)
    ax.set_title(f"Loss — {_method_name(doc)} ({_outcome_note(doc)})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", frameon=True)


def _plot_test_loss(ax, doc: Mapping[str, Any], time: np.ndarray, log_time: bool, known: bool) -> None:
    """The test loss (with data.test), its minimum (the early-stopping point) and the loss theory, dashed."""
    theory = doc.get("loss_theory") or {}
    note = "" if theory.get("exact") else " (approximate)"
    if known and theory.get("loss") is not None:
        y = _array(theory["loss"])
        ok = _time_mask(time, log_time) & np.isfinite(y) & (y > 0)
        ax.plot(time[ok], y[ok], color="C0", ls="--", lw=1.2, label=f"theory L, {theory['model']}{note}")
    if doc.get("test_loss") is None:
        return
    y = _array(doc["test_loss"])
    ok = _time_mask(time, log_time) & np.isfinite(y) & (y > 0)
    ax.plot(time[ok], y[ok], color="C3", lw=1.8, label="test loss L_test(t)")
    if theory.get("test_loss") is not None:
        yt = _array(theory["test_loss"])
        okt = _time_mask(time, log_time) & np.isfinite(yt) & (yt > 0)
        ax.plot(time[okt], yt[okt], color="C3", ls="--", lw=1.2, label=f"theory L_test, {theory['model']}{note}")
    stop = doc.get("early_stopping") or {}
    if stop.get("time") is not None and stop.get("test_loss") is not None and (stop["time"] > 0 or not log_time):
        ax.plot([stop["time"]], [stop["test_loss"]], "v", color="C3", ms=7,
                label=f"least test loss {stop['test_loss']:.4g} at t = {_fmt_time(stop['time'])}")


# ------------------------------------------------------------------------------------------------
# modes


def _plot_modes(fig: Figure, doc: Mapping[str, Any], log_time: bool) -> None:
    ax = fig.add_subplot()
    modes = doc["modes"]
    time = _array(doc["time"])
    strength = _array(modes["strength"]).reshape(len(time), -1)
    theory = _array(modes["theory"]).reshape(len(time), -1) if modes.get("theory") is not None else None
    svals = _array(modes["singular_values"])
    k = strength.shape[1]
    keep = _time_mask(time, log_time)
    colours = _mode_colours(k)
    handles = []
    for a in range(k):
        # Simulated: wide and translucent; theory: thin dashed on top, visible even where they coincide.
        (line,) = ax.plot(time[keep], strength[keep, a], color=colours[a], lw=2.6, alpha=0.55,
                          label=f"mode {a + 1}: s = {svals[a]:.4g}")
        if theory is not None:
            ax.plot(time[keep], theory[keep, a], color=colours[a], lw=1.3, ls=(0, (4, 3)))
        if a < MAX_LEGEND_MODES:
            handles.append(line)
    if k > MAX_LEGEND_MODES:
        handles.append(Line2D([], [], ls="", label=f"… and {k - MAX_LEGEND_MODES} more modes"))
    model = modes.get("theory_model")
    exact = bool(modes.get("theory_exact"))
    style = [Line2D([], [], color="0.2", lw=2.6, alpha=0.55, label=f"simulated ({_method_name(doc)})")]
    if theory is not None:
        qualifier = " (exact)" if exact else " (approximate)"
        style.append(Line2D([], [], color="0.2", lw=1.3, ls=(0, (4, 3)), label=f"theory: {model}{qualifier}"))
        subtitle = f"dashed: theory {model}{qualifier}"
    else:
        subtitle = "no analytic prediction applies to this setting"
    first = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="modes of Σ31 = U S Vᵀ",
                      frameon=False, fontsize=9)
    ax.add_artist(first)
    ax.legend(handles=style, loc="lower left", bbox_to_anchor=(1.01, 0.0), frameon=False, fontsize=9)
    if log_time:
        ax.set_xscale("log")
    ax.set_xlabel(_time_label(doc, log_time))
    ax.set_ylabel("mode strength u_α(t) = u_αᵀ W(t) v_α")
    ax.set_title(f"Mode strengths — {_method_name(doc)} ({_outcome_note(doc)})\n{subtitle}")
    ax.grid(True, alpha=0.3)


# ------------------------------------------------------------------------------------------------
# heatmaps: product and similarity


def _label_axis(ax, axis: str, names: Sequence[str] | None, n: int, title: str) -> None:
    set_label = ax.set_xlabel if axis == "x" else ax.set_ylabel
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    if names is not None and len(names) == n and n <= MAX_TICK_LABELS:
        set_ticks(range(n), list(names), **({"rotation": 90} if axis == "x" else {}), fontsize=8)
    set_label(title)


def _heatmaps(fig: Figure, panels: list[tuple[str, np.ndarray]], *, xlabel: str, ylabel: str,
              xnames: Sequence[str] | None, ynames: Sequence[str] | None, colour_label: str, title: str) -> None:
    """Side-by-side matrices on one symmetric diverging colour scale (0 is white), one colour bar."""
    finite = [np.abs(m[np.isfinite(m)]) for _, m in panels]
    vmax = max((float(f.max()) for f in finite if f.size), default=1.0) or 1.0
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for i, (ax, (name, m)) in enumerate(zip(axes, panels, strict=True)):
        image = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest", aspect="equal")
        ax.set_title(name)
        _label_axis(ax, "x", xnames, m.shape[1], xlabel)
        if i == 0:
            _label_axis(ax, "y", ynames, m.shape[0], ylabel)
        else:  # same rows as the first panel: its labels serve the row
            ax.tick_params(labelleft=False)
    fig.colorbar(image, ax=list(axes), shrink=0.85, label=colour_label)
    fig.suptitle(title)


def _chosen_records(time: np.ndarray, times: Sequence[float] | None, default: list[int]) -> list[int]:
    if not times:
        return default
    if len(times) > MAX_TIMES:
        raise PlotError(f"{len(times)} times asked for, at most {MAX_TIMES} panels fit", field="time",
                        fix=f"give at most {MAX_TIMES} time values")
    return nearest_records(time, times)


def _plot_product(fig: Figure, doc: Mapping[str, Any], times: Sequence[float] | None,
                  labels: Mapping[str, Any] | None) -> None:
    time = _array(doc["time"])
    product = _array(doc["product"])
    records = _chosen_records(time, times, [len(time) - 1])
    panels = [(f"W(t = {_fmt_time(time[i])})", product[i]) for i in records]
    opt = doc["optimum"]
    panels.append((f"optimum W* (rank {opt['rank']})", _array(opt["product"])))
    labels = labels or {}
    _heatmaps(fig, panels, xlabel="input (item)" if labels.get("items") else "input i",
              ylabel="output (feature)" if labels.get("features") else "output j",
              xnames=labels.get("items"), ynames=labels.get("features"), colour_label="entry of W",
              title=f"Network map W = W_D⋯W_1 — {_method_name(doc)} ({_outcome_note(doc)})")


def _plot_similarity(fig: Figure, doc: Mapping[str, Any], times: Sequence[float] | None,
                     labels: Mapping[str, Any] | None) -> None:
    if doc.get("similarity") is None:
        raise PlotError("this simulation did not record the hidden-layer similarity", field="kind",
                        fix="run the simulation again with record.similarity set to true", code="not_recorded")
    time = _array(doc["time"])
    rsm = _array(doc["similarity"])
    n = len(time)
    default = sorted({round(x) for x in np.linspace(0, n - 1, min(DEFAULT_SIMILARITY_PANELS, n))})
    records = _chosen_records(time, times, default)
    panels = [(f"t = {_fmt_time(time[i])}", rsm[i]) for i in records]
    items = (labels or {}).get("items")
    name = "item" if items else "input basis vector (item) i"
    _heatmaps(fig, panels, xlabel=name, ylabel=name, xnames=items, ynames=items,
              colour_label="similarity h_i · h_j", title="Hidden-layer representational similarity "
              f"RSM = W21ᵀW21 (h_i = W21 e_i) — {_method_name(doc)}")


def _gram_distance(stack: np.ndarray) -> np.ndarray:
    """1 − ⟨G(0), G(t)⟩/(‖G(0)‖‖G(t)‖) per record for a stack of Grams (T, n, n)."""
    flat = stack.reshape(len(stack), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - flat @ flat[0] / (np.linalg.norm(flat, axis=1) * np.linalg.norm(flat[0]))


def _plot_kernel(fig: Figure, doc: Mapping[str, Any], log_time: bool) -> None:
    if doc.get("kernel_distance") is None or doc.get("kernel") is None:
        raise PlotError("this simulation did not record the neural tangent kernel", field="kind",
                        fix="run the simulation again with record.kernel set to true", code="not_recorded")
    ax = fig.add_subplot()
    time = _array(doc["time"])
    keep = _time_mask(time, log_time)
    ax.plot(time[keep], _array(doc["kernel_distance"])[keep], color="k", lw=2.0,
            label="NTK: 1 − cos(K(0), K(t))")
    inputs = _array(doc["kernel"]["input_grams"])      # (T, D−1, n_in, n_in)
    outputs = _array(doc["kernel"]["output_grams"])    # (T, D−1, n_out, n_out)
    layers = inputs.shape[1] if inputs.ndim == 4 else 0
    for h in range(min(layers, MAX_LEGEND_MODES)):
        colour = f"C{h}"
        ax.plot(time[keep], _gram_distance(inputs[:, h])[keep], color=colour, ls="--", lw=1.3,
                label=f"input side P_{h + 1} = (W_{h + 1}⋯W_1)ᵀ(W_{h + 1}⋯W_1)")
        ax.plot(time[keep], _gram_distance(outputs[:, h])[keep], color=colour, ls=":", lw=1.5,
                label=f"output side Q_{h + 1} = (W_D⋯W_{h + 2})(W_D⋯W_{h + 2})ᵀ")
    if log_time:
        ax.set_xscale("log")
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel(_time_label(doc, log_time))
    ax.set_ylabel("kernel distance 1 − ⟨A(0), A(t)⟩ / (‖A(0)‖ ‖A(t)‖)\n0: lazy (the kernel keeps its direction)")
    ax.set_title(f"Neural tangent kernel over time — {_method_name(doc)} ({_outcome_note(doc)})")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", frameon=True)


# ------------------------------------------------------------------------------------------------
# entry point


def _figure_size(kind: str, doc: Mapping[str, Any], times: Sequence[float] | None) -> tuple[float, float]:
    if kind in ("loss", "kernel"):
        return 8.0, 5.0
    if kind == "modes":
        return 10.0, 5.5
    count = len(times) if times else (1 if kind == "product" else DEFAULT_SIMILARITY_PANELS)
    panels = min(count, MAX_TIMES) + (1 if kind == "product" else 0)
    # Each panel as wide as its matrix is at 3.4 inches high (within 1.8–4.5 inches), so tall maps get no gaps.
    first = doc["product"][0] if kind == "product" and len(doc["product"]) else [[0.0]]
    rows, cols = len(first), len(first[0])
    width = min(max(3.4 * cols / rows, 1.8), 4.5) + 0.4
    return 1.6 + width * panels, 4.8


def render_plot(doc: Mapping[str, Any], kind: str, *, log_time: bool = False, times: Sequence[float] | None = None,
                labels: Mapping[str, Any] | None = None, fmt: str = "svg") -> bytes:
    """The ``kind`` plot of trajectory document ``doc`` (service.schemas.Trajectory as a dict) as ``fmt`` bytes.

    ``times`` picks the records of product/similarity panels (the nearest record to each); ``labels``
    ({"items": [...], "features": [...]}, e.g. from presets.preset_labels) names the matrices' rows/columns.
    Raises PlotError for a plot that cannot be drawn (data not recorded, too many panels).
    """
    if kind not in KINDS:
        raise PlotError(f"unknown plot kind {kind!r}", field="kind", fix=f"use one of {', '.join(KINDS)}")
    if fmt not in FORMATS:
        raise PlotError(f"unknown format {fmt!r}", field="format", fix=f"use one of {', '.join(FORMATS)}")
    if times is not None and any(not np.isfinite(t) or t < 0 for t in times):
        raise PlotError("times must be finite and ≥ 0", field="time", fix="give times t ≥ 0 within the run")
    with _LOCK, matplotlib.rc_context(_RC):
        fig = Figure(figsize=_figure_size(kind, doc, times), layout="constrained")
        if kind == "loss":
            _plot_loss(fig, doc, log_time)
        elif kind == "modes":
            _plot_modes(fig, doc, log_time)
        elif kind == "kernel":
            _plot_kernel(fig, doc, log_time)
        elif kind == "product":
            _plot_product(fig, doc, times, labels)
        else:
            _plot_similarity(fig, doc, times, labels)
        return _save(fig, fmt)


# ------------------------------------------------------------------------------------------------
# sweeps: one summary value per point against a swept parameter

SWEEP_KINDS = ("learning_time", "final_loss")
MAX_SWEEP_SERIES = 6          # combinations of the other axes drawn as separate series / panels


def sweep_axes(request: Mapping[str, Any]) -> list[str]:
    """The swept parameter paths of a SweepRequest document: the grid's axes in order, else every path the
    explicit points set, in order of first appearance."""
    if request.get("grid"):
        return list(request["grid"])
    seen: dict[str, None] = {}
    for point in request.get("points") or ():
        seen.update(dict.fromkeys(point))
    return list(seen)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _value_label(v: Any) -> str:
    if _is_number(v):
        return f"{v:.4g}"
    return str(v).replace("'", '"') if not isinstance(v, str) else v


def _spans_decade(values: Sequence[float]) -> bool:
    """Log scale when every value is positive and they span more than a factor 10."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    return bool(arr.size) and bool(np.all(arr > 0)) and float(arr.max()) > 10 * float(arr.min())


def _num(v: Any) -> float:
    return float(v) if v is not None else np.nan


def _sweep_series(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], x: str):
    """(x positions per row, tick labels or None, log x?, {series label: [row indices]}) for axis ``x``."""
    raw = [r["parameters"].get(x) for r in rows]
    if all(_is_number(v) for v in raw):
        xs = np.array(raw, dtype=np.float64)
        ticks = None
        log_x = _spans_decade(list(xs))
    else:  # categorical (lists, strings, booleans): positions 0..m-1 in order of first appearance
        order: dict[str, int] = {}
        keys = [_json_key(v) for v in raw]
        for key in keys:
            order.setdefault(key, len(order))
        xs = np.array([order[key] for key in keys], dtype=np.float64)
        labels = {order[key]: _value_label(v) for key, v in zip(keys, raw, strict=True)}
        ticks = [labels[i] for i in range(len(order))]
        log_x = False
    others = [a for a in axes if a != x]
    series: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        label = ", ".join(f"{a} = {_value_label(r['parameters'][a])}" for a in others if a in r["parameters"])
        series.setdefault(label or "all points", []).append(i)
    return xs, ticks, log_x, series


def _json_key(v: Any) -> str:
    """A hashable key of a JSON value (lists and objects included)."""
    return json.dumps(v, sort_keys=True)


def _mark_diverged(ax, xs: np.ndarray) -> None:
    """Diverged points have no meaningful value: a red × at the top edge, at their x."""
    if xs.size:
        ax.plot(xs, np.full(xs.shape, 0.96), ls="", marker="x", ms=9, mew=2.2, color="red",
                transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)


def _sweep_learning_time(fig: Figure, rows, xs, series, x: str, log_x: bool, ticks) -> list:
    k = max((len(r.get("learning_time") or r.get("learning_time_theory") or ()) for r in rows), default=0)
    colours = _mode_colours(k)
    n = len(series)
    ncols = min(n, 3)
    axes = fig.subplots((n + ncols - 1) // ncols, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    models = sorted({r["theory_model"] for r in rows if r.get("theory_model") and r.get("learning_time_theory")})
    any_theory = unlearned = False
    all_y: list[float] = []
    for ax, (label, idx) in zip(axes, series.items(), strict=False):
        ok = [i for i in idx if rows[i]["status"] == "succeeded" and rows[i].get("outcome") != "diverged"]
        order = sorted(ok, key=lambda i: xs[i])
        for a in range(k):
            measured = np.array([_num((rows[i].get("learning_time") or [None] * k)[a]) for i in order])
            theory = np.array([_num((rows[i].get("learning_time_theory") or [None] * k)[a]) for i in order])
            px = xs[order]
            unlearned |= bool(np.any(np.isnan(measured) & np.isfinite(theory)))
            if np.isfinite(measured).any():
                ax.plot(px, measured, color=colours[a], lw=1.6, marker="o", ms=5)
            if np.isfinite(theory).any():
                any_theory = True
                ax.plot(px, theory, color=colours[a], lw=1.4, ls=(0, (5, 3)))
            all_y += [v for v in np.concatenate([measured, theory]) if np.isfinite(v)]
        _mark_diverged(ax, xs[[i for i in idx if rows[i].get("outcome") == "diverged"]])
        if n > 1:
            ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    ax0 = axes[0]
    if log_x:
        ax0.set_xscale("log")
    if _spans_decade(all_y):
        ax0.set_yscale("log")
        if max(all_y) < 100 * min(all_y):
            # Under two decades the default labels read "4×10⁰"; plain numbers are clearer.
            ax0.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax0.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if ticks is not None:
        ax0.set_xticks(range(len(ticks)), ticks)
    xlabel = x + ("  [log scale]" if log_x else "")
    ylabel = "learning time t_α (u_α first reaches half its final value)"
    for i, ax in enumerate(axes[:n]):
        if i + ncols >= n:  # no panel below this one: it carries the x axis
            ax.set_xlabel(xlabel)
            ax.tick_params(labelbottom=True)
        if i % ncols == 0:
            ax.set_ylabel(ylabel)
    handles = [Line2D([], [], color=colours[a], lw=1.6, marker="o", ms=5, label=f"mode {a + 1}")
               for a in range(min(k, MAX_LEGEND_MODES))]
    if k > MAX_LEGEND_MODES:
        handles.append(Line2D([], [], ls="", label=f"… and {k - MAX_LEGEND_MODES} more modes"))
    handles.append(Line2D([], [], color="0.2", lw=1.6, marker="o", ms=5, label="measured (solid, markers)"))
    if any_theory:
        handles.append(Line2D([], [], color="0.2", lw=1.4, ls=(0, (5, 3)),
                              label=f"theory: {', '.join(models) or 'analytic'} (dashed)"))
    else:
        handles.append(Line2D([], [], ls="", label="no analytic prediction applies"))
    if unlearned:
        handles.append(Line2D([], [], ls="", label="no marker: not learned within the run"))
    return handles


def _sweep_final_loss(fig: Figure, rows, xs, series, x: str, log_x: bool, ticks) -> list:
    ax = fig.add_subplot()
    colours = _mode_colours(len(series))
    dropped = 0
    handles = []
    for c, (label, idx) in enumerate(series.items()):
        ok = sorted((i for i in idx if rows[i]["status"] == "succeeded" and rows[i].get("outcome") != "diverged"),
                    key=lambda i: xs[i])
        y = np.array([_num(rows[i].get("final_excess_loss")) for i in ok])
        keep = np.isfinite(y) & (y > 0)
        zero = np.isfinite(y) & ~keep
        dropped += int(np.sum(zero))
        (line,) = ax.plot(xs[ok][keep], y[keep], color=colours[c], lw=1.6, marker="o", ms=5, label=label)
        # L − L* ≤ 0 is the optimum reached to round-off (a realisable task): no log, so a ▼ on the bottom edge.
        ax.plot(xs[ok][zero], np.full(int(zero.sum()), 0.03), ls="", marker="v", ms=8, color=colours[c],
                transform=ax.get_xaxis_transform(), clip_on=False)
        if len(series) > 1:
            handles.append(line)
    _mark_diverged(ax, xs[[i for i, r in enumerate(rows) if r.get("outcome") == "diverged"]])
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    if ticks is not None:
        ax.set_xticks(range(len(ticks)), ticks)
    ax.set_xlabel(x + ("  [log scale]" if log_x else ""))
    ax.set_ylabel("final excess loss L − L* (last record)  [log scale]")
    ax.grid(True, which="major", alpha=0.3)
    if dropped:
        handles.append(Line2D([], [], ls="", marker="v", ms=8, color="0.3",
                              label=f"L − L* ≤ 0: optimum to round-off ({dropped} point{'s' if dropped > 1 else ''})"))
    return handles


def render_sweep_plot(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], kind: str, x: str | None = None, *,
                      fmt: str = "svg") -> bytes:
    """A sweep's summary plot as ``fmt`` bytes. ``rows``: every point's results row (service.schemas.
    SweepPointResult as a dict, parameters decoded), finished or not; ``axes``: the swept paths (sweep_axes).

    ``learning_time``: per mode, the measured learning time (solid, markers) and the theory's (dashed, same
    colour) against parameter ``x`` (default: the first axis), one panel per combination of the other axes.
    ``final_loss``: the final excess loss L − L* (log y), one line per combination. Log x when the values are
    positive and span more than a decade. Diverged points: a red × at the top edge, counted in the legend.
    Raises PlotError for an unknown kind or axis, or more than MAX_SWEEP_SERIES combinations.
    """
    if kind not in SWEEP_KINDS:
        raise PlotError(f"unknown sweep plot kind {kind!r}", field="kind", fix=f"use one of {', '.join(SWEEP_KINDS)}")
    if fmt not in FORMATS:
        raise PlotError(f"unknown format {fmt!r}", field="format", fix=f"use one of {', '.join(FORMATS)}")
    if not axes:
        raise PlotError("this sweep sets no parameters to plot against", field="x", fix="sweep at least one parameter")
    x = axes[0] if x is None else x
    if x not in axes:
        raise PlotError(f"{x!r} is not a swept parameter of this sweep", field="x",
                        fix=f"use one of {', '.join(axes)}")
    rows = [r for r in rows if x in r["parameters"]]
    xs, ticks, log_x, series = _sweep_series(rows, axes, x)
    if len(series) > MAX_SWEEP_SERIES:
        others = [a for a in axes if a != x]
        raise PlotError(f"the other axes ({', '.join(others)}) make {len(series)} combinations, more than the "
                        f"{MAX_SWEEP_SERIES} series a readable plot holds", field="x",
                        fix=f"plot against another axis (one of {', '.join(others)}), or sweep fewer values")
    n = len(rows)
    finished = sum(r["status"] in ("succeeded", "failed") for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    diverged = sum(r.get("outcome") == "diverged" for r in rows)
    what = {"learning_time": "Learning time per mode", "final_loss": "Final excess loss"}[kind]
    status = f"all {n} points finished" if finished == n else f"{finished} of {n} points finished"
    if failed:
        status += f", {failed} failed"
    with _LOCK, matplotlib.rc_context(_RC):
        panels = len(series) if kind == "learning_time" else 1
        cols = min(panels, 3)
        rows_of_panels = (panels + cols - 1) // cols
        size = (9.0, 5.0) if panels == 1 else (2.2 + 4.2 * cols, 1.2 + 3.6 * rows_of_panels)
        fig = Figure(figsize=size, layout="constrained")
        draw = _sweep_learning_time if kind == "learning_time" else _sweep_final_loss
        handles = draw(fig, rows, xs, series, x, log_x, ticks)
        if diverged:
            handles.append(Line2D([], [], ls="", marker="x", ms=9, mew=2.2, color="red",
                                  label=f"diverged ({diverged} point{'s' if diverged > 1 else ''}; no value)"))
        title = f"{what} vs {x} — {status}"
        if panels == 1:  # a figure-level legend would collide with a figure-level title
            ax = fig.axes[0]
            ax.set_title(title)
            if handles:
                ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
        else:
            fig.suptitle(title)
            fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9)
        return _save(fig, fmt)
