"""Figures of trajectories, sweeps and comparisons, as matplotlib ``Figure`` objects or SVG / PNG / PDF bytes, without
any web framework.

    svg = render_plot(document, "modes")                                   # bytes of an SVG file
    png = render_plot(document, "similarity", Options(times=(0, 5, 40)), fmt="png", dpi=200)
    fig = plot_figure(document, "loss")                                    # the Figure, laid out (tests read it)

One family of figures per module:

    loss        L(t), L*, test loss and its minimum, loss theory (modes and random matrix), the linearised network's
                loss; the round-off floor not drawn as data
    modes       mode strengths, theory dashed, strengths at the optimum u* dotted, learning times ●
    product     W(t) at the stage times (or t_stop), W*, the teacher W̄ of a noisy teacher
    similarity  RSM = W21ᵀW21 at t = 0, the stage times and the end
    kernel      NTK distance and the Grams' distances, each term's share of K; log y for a lazy run
    tasks       a task sequence: every phase's task loss, the switches marked, the phases tinted (forgetting)
    sharpness   the top Hessian eigenvalues with GD's threshold 2/η (edge of stability), the loss above
    sweeps      a sweep's results against a swept parameter: seeds averaged, small multiples by a stated rule
    compare     several runs in one figure (loss, modes, kernel, sharpness)

and the shared parts: ``common`` (options, context, errors), ``style`` (look, legends), ``timing`` (the time axis,
stage times), ``heatmaps`` (matrices at any size), ``render`` (the lock, the formats).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from . import compare, kernel, loss, modes, product, sharpness, similarity, sweeps, tasks
from .common import MAX_TIMES, SCALES, Context, Options, PlotError, nearest_records, precision_of
from .compare import COMPARE_KINDS, MAX_RUNS
from .render import DEFAULT_DPI, FORMATS, MAX_DPI, MIN_DPI, build, render
from .sweeps import AGGREGATES, MAX_LINES, MAX_PANELS, SWEEP_KINDS, sweep_axes

KINDS = ("loss", "modes", "product", "similarity", "kernel", "tasks", "sharpness")
# Trajectory members no figure reads: the plot routes leave them out of the documents they build, so that a run that
# recorded every layer at every record (record.weights) is not decompressed whole to draw its loss
NOT_DRAWN = ("weights", "final_weights", "gradient_norm", "balance_drift", "distance_to_optimum", "stability_hint")
_FIGURES = {"loss": loss.figure, "modes": modes.figure, "product": product.figure, "similarity": similarity.figure,
            "kernel": kernel.figure, "tasks": tasks.figure, "sharpness": sharpness.figure}

__all__ = ["AGGREGATES", "COMPARE_KINDS", "DEFAULT_DPI", "FORMATS", "KINDS", "MAX_DPI", "MAX_LINES", "MAX_PANELS",
           "MAX_RUNS", "MAX_TIMES", "MIN_DPI", "NOT_DRAWN", "SCALES", "SWEEP_KINDS", "Context", "Options", "PlotError",
           "compare_figure", "nearest_records", "plot_figure", "precision_of", "render_compare", "render_plot",
           "render_sweep_plot", "sweep_axes", "sweep_figure"]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PlotError(f"unknown plot kind {kind!r}", field="kind", fix=f"use one of {', '.join(KINDS)}")


def plot_figure(doc: Mapping[str, Any], kind: str, options: Options | None = None,
                context: Context | None = None) -> Figure:
    """The ``kind`` figure of trajectory document ``doc`` (the Trajectory schema as a dict), laid out."""
    _check_kind(kind)
    return build(lambda: _FIGURES[kind](doc, options or Options(), context or Context()))


def render_plot(doc: Mapping[str, Any], kind: str, options: Options | None = None, context: Context | None = None,
                *, fmt: str = "svg", dpi: int | None = None) -> bytes:
    """``plot_figure`` as ``fmt`` bytes (svg, png with ``dpi``, pdf). Raises PlotError for a plot that cannot be
    drawn (data not recorded: code "not_recorded"; an option out of its domain)."""
    _check_kind(kind)
    return render(lambda: _FIGURES[kind](doc, options or Options(), context or Context()), fmt, dpi)


def sweep_figure(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], kind: str, x: str | None = None, *,
                 aggregate: str = "seed", y_scale: str = "auto") -> Figure:
    return build(lambda: sweeps.figure(rows, axes, kind, x, aggregate=aggregate, y_scale=y_scale))


def render_sweep_plot(rows: Sequence[Mapping[str, Any]], axes: Sequence[str], kind: str, x: str | None = None, *,
                      aggregate: str = "seed", y_scale: str = "auto", fmt: str = "svg", dpi: int | None = None) -> bytes:
    """A sweep's summary plot (``sweeps``) as ``fmt`` bytes."""
    return render(lambda: sweeps.figure(rows, axes, kind, x, aggregate=aggregate, y_scale=y_scale), fmt, dpi)


def compare_figure(runs: Sequence[tuple[str, Mapping[str, Any], Context]], kind: str,
                   options: Options | None = None) -> Figure:
    return build(lambda: compare.figure(runs, kind, options or Options()))


def render_compare(runs: Sequence[tuple[str, Mapping[str, Any], Context]], kind: str, options: Options | None = None,
                   *, fmt: str = "svg", dpi: int | None = None) -> bytes:
    """Several runs in one figure (``compare``) as ``fmt`` bytes."""
    return render(lambda: compare.figure(runs, kind, options or Options()), fmt, dpi)
