"""The look shared by every figure: fonts and sizes, colours, legends that never cover data, notes, number ticks.

Legends go outside the axes (right of them, or below a row of panels), so they never hide a curve; constrained
layout makes room for them. A note (what was left out, how an axis was chosen, what a symbol means) is a legend row
without a line, so it sits with the legend instead of on the data.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

RC = {"svg.fonttype": "none", "font.size": 10, "axes.titlesize": 11, "figure.dpi": 100, "legend.fontsize": 9,
      "axes.spines.top": False, "axes.spines.right": False, "pdf.fonttype": 42}
GRID = {"alpha": 0.3, "lw": 0.6}
LEGEND_GREY = "0.2"         # style samples in legends ("solid: simulated", "dashed: theory")
MAX_LEGEND_ROWS = 12        # rows of a legend naming curves; past it "… and N more"
LEGEND_WIDTH = 52           # characters of a legend row before it wraps


def colours(n: int) -> list:
    """n distinct colours: tab10 up to 10, else evenly along viridis."""
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, n)]


def wrap(text: str, width: int = LEGEND_WIDTH, indent: str = "  ") -> str:
    """A legend row (or label) wrapped to ``width`` characters, continuation lines indented by ``indent``."""
    return "\n".join(textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False)) or text


def note(text: str) -> Line2D:
    """A legend row without a line: a note that sits with the legend."""
    return Line2D([], [], ls="", marker="", label=wrap(text))


def sample(label: str, **style) -> Line2D:
    """A legend row with a grey line in ``style`` (what solid / dashed / a marker means)."""
    return Line2D([], [], color=style.pop("color", LEGEND_GREY), label=wrap(label), **style)


def legend_right(ax: Axes, handles: Sequence, *, title: str | None = None, anchor_y: float = 1.0,
                 loc: str = "upper left") -> Legend:
    """A legend right of the axes (outside them: it never covers data)."""
    return ax.legend(handles=list(handles), loc=loc, bbox_to_anchor=(1.02, anchor_y), frameon=False,
                     title=title, alignment="left", borderaxespad=0.0)


def figure_legend(fig: Figure, handles: Sequence, *, title: str | None = None) -> Legend:
    """A legend right of every panel of the figure (constrained layout keeps it clear of them)."""
    return fig.legend(handles=list(handles), loc="outside right upper", frameon=False, title=title,
                      alignment="left")


def log_axis(axis, values) -> None:
    """A log axis with readable labels for the range of ``values`` (positive finite ones): under four decades ticks
    at 1, 2, 5 × 10ⁿ written as plain numbers (10, 20, 50, 100 …; within one decade more of them), else powers of
    ten."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and float(v.max()) < 1e4 * float(v.min()):
        subs = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0) if float(v.max()) < 10 * float(v.min()) else (1.0, 2.0, 5.0)
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
        axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    else:
        axis.set_major_locator(LogLocator(base=10, numticks=8))


def integer_ticks(axis, n: int, names: Sequence[str] | None = None, positions: Sequence[int] | None = None,
                  max_names: int = 32, max_ticks: int = 8) -> None:
    """Ticks at whole indices of an n-long matrix axis: the names when given and few enough (rotated on x), else at
    most ``max_ticks`` integers (``positions``: the original index shown at each place, for a selection)."""
    idx = list(range(n)) if positions is None else list(positions)
    if names is not None and len(names) >= max(idx, default=-1) + 1 and n <= max_names:
        axis.set_ticks(range(n), [str(names[i]) for i in idx], fontsize=8)
        return
    if n <= max_ticks:
        places = list(range(n))
    else:
        locator = MaxNLocator(nbins=max_ticks, integer=True, steps=[1, 2, 5, 10])
        places = [int(p) for p in locator.tick_values(0, n - 1) if 0 <= p <= n - 1]
    axis.set_ticks(places, [str(idx[p]) for p in places])
