"""Matrices as heatmaps, side by side on one symmetric diverging colour scale (0 is white), legibly at any size.

* Whole-index ticks (never −0.5 … 2.5), the preset's item and feature names when there are few enough.
* Past MAX_SIDE rows (or columns) a panel shows MAX_SIDE of them and the figure says which: the rows with the largest
  norm in a reference matrix (W* for the network map), or, when that norm does not tell them apart (the ±1 features
  of branching_diffusion all have one norm), rows evenly spaced in index.
* Long thin matrices get a box aspect of at most MAX_ASPECT, so a 10,000 × 8 map is not a hairline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from .style import integer_ticks

MAX_SIDE = 48
MAX_ASPECT = 3.0
PANELS_PER_ROW = 6


@dataclass(frozen=True)
class Selection:
    """The indices shown along one side of the matrices, and what the figure says about them (None: all)."""

    index: np.ndarray
    statement: str | None = None


def select(n: int, scores: np.ndarray | None, what: str, reference: str) -> Selection:
    """At most MAX_SIDE of n indices (module docstring); ``what`` names them ("output features"), ``reference`` the
    matrix whose norms rank them ("W*")."""
    if n <= MAX_SIDE:
        return Selection(np.arange(n))
    if scores is not None:
        order = np.argsort(-scores, kind="stable")
        top = scores[order[:MAX_SIDE]]
        next_best = scores[order[MAX_SIDE]]
        if np.isfinite(top).all() and top[-1] > next_best * (1 + 1e-6):
            return Selection(np.sort(order[:MAX_SIDE]),
                             f"{MAX_SIDE} of {n} {what} shown: those with the largest norm in {reference}")
    idx = np.unique(np.rint(np.linspace(0, n - 1, MAX_SIDE)).astype(int))
    return Selection(idx, f"{idx.size} of {n} {what} shown, evenly spaced in index (every ≈{n / idx.size:.0f}th)")


def draw(fig: Figure, panels: Sequence[tuple[str, np.ndarray]], *, rows: Selection, cols: Selection, xlabel: str,
         ylabel: str, xnames: Sequence[str] | None, ynames: Sequence[str] | None, colour_label: str) -> list:
    """The panels (title, matrix) on one colour scale with one colour bar; returns the axes."""
    shown = [m[np.ix_(rows.index, cols.index)] for _, m in panels]
    finite = [np.abs(m[np.isfinite(m)]) for m in shown]
    vmax = max((float(f.max()) for f in finite if f.size), default=1.0) or 1.0
    n = len(panels)
    ncols = min(n, PANELS_PER_ROW)
    nrows = (n + ncols - 1) // ncols
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    r, c = shown[0].shape
    aspect = min(max(r / c, 1 / MAX_ASPECT), MAX_ASPECT)
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.set_visible(False)
            continue
        image = ax.imshow(shown[i], cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest", aspect="auto")
        ax.set_box_aspect(aspect)
        ax.set_title(panels[i][0], fontsize=10)
        integer_ticks(ax.xaxis, c, xnames, cols.index)
        integer_ticks(ax.yaxis, r, ynames, rows.index)
        if xnames is not None and c <= 32 and len(xnames) > max(cols.index, default=0):
            ax.tick_params(axis="x", labelrotation=90)
        if i % ncols == 0:
            ax.set_ylabel(ylabel)
        else:
            ax.tick_params(labelleft=False)
        if i + ncols >= n:
            ax.set_xlabel(xlabel)
        for side in ("top", "right"):
            ax.spines[side].set_visible(True)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=colour_label)
    return [ax for ax in axes.ravel()[:n]]
