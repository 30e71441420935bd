"""Figures to bytes: SVG for the web, PNG for slides (``dpi``), PDF for papers.

Figures are ``matplotlib.figure.Figure`` objects on the headless Agg canvas (never pyplot's global figure manager),
built and saved under one lock: matplotlib documents that it is not thread-safe, and rendering holds the GIL anyway,
so serialising renders costs the thread pool nothing measurable. Text stays text in the SVG (svg.fonttype "none":
smaller files that are searchable and accessible) and fonts are embedded as TrueType in the PDF (editable). The
same figure renders to the same bytes (no dates in SVG or PDF metadata).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .common import PlotError
from .style import RC

# Headless, explicitly: nothing here uses pyplot, but a server must never pick an interactive backend.
matplotlib.use("Agg")

FORMATS = {"svg": "image/svg+xml", "png": "image/png", "pdf": "application/pdf"}
DEFAULT_DPI = 150
MIN_DPI, MAX_DPI = 50, 600
_LOCK = threading.RLock()


def new_figure(width: float, height: float) -> Figure:
    """A figure of this size (inches) with constrained layout on an Agg canvas (so it can measure its text)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def build(make: Callable[[], Figure]) -> Figure:
    """``make()`` under the render lock and the house style, laid out (so tests can read positions)."""
    with _LOCK, matplotlib.rc_context(RC):
        fig = make()
        fig.canvas.draw()
        return fig


def save(fig: Figure, fmt: str, dpi: int | None = None) -> bytes:
    """The figure as ``fmt`` bytes (``dpi`` for PNG, default DEFAULT_DPI)."""
    if fmt not in FORMATS:
        raise PlotError(f"unknown format {fmt!r}", field="format", fix=f"use one of {', '.join(FORMATS)}")
    dpi = DEFAULT_DPI if dpi is None else int(dpi)
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise PlotError(f"dpi {dpi} is outside {MIN_DPI}..{MAX_DPI}", field="dpi",
                        fix=f"give dpi between {MIN_DPI} and {MAX_DPI} (150 for slides, 300 for print)")
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}, "png": None}[fmt]
    buf = io.BytesIO()
    with _LOCK, matplotlib.rc_context(RC):
        fig.savefig(buf, format=fmt, dpi=dpi if fmt == "png" else None, metadata=metadata)
    return buf.getvalue()


def render(make: Callable[[], Figure], fmt: str = "svg", dpi: int | None = None) -> bytes:
    """Build the figure ``make()`` and save it as ``fmt``."""
    with _LOCK:
        return save(build(make), fmt, dpi)
