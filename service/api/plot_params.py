"""The query parameters, media types and problems the plot routes share (``service.api.plots``,
``service.api.compare``): declared once, so every route of a format family takes the same parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import Field

from service import codec
from service.plots import (
    AGGREGATES,
    DEFAULT_DPI,
    FORMATS,
    MAX_DPI,
    MAX_TIMES,
    MIN_DPI,
    NOT_DRAWN,
    Options,
    PlotError,
)
from service.problems import ProblemError, field_error

__all__ = ["FORMATS", "PLOT_MEMBERS", "Dpi", "ScaleQuery", "SimulationPlotQuery", "SweepPlotQuery", "plot_document",
           "plot_problem", "simulation_plot_query", "success", "sweep_plot_query"]

# The members of a stored trajectory that figures read (``service.plots.NOT_DRAWN`` are not read from the store)
PLOT_MEMBERS = tuple(m for m in codec.MEMBERS if m not in NOT_DRAWN)


def plot_document(stored: codec.Stored) -> dict[str, Any]:
    """The trajectory document a figure is drawn from: ``PLOT_MEMBERS`` only, each array read when it is selected."""
    return codec.document(codec.select(stored, PLOT_MEMBERS), PLOT_MEMBERS)

Scale = Literal["auto", "linear", "log"]
ScaleQuery = Annotated[Scale, Query(
    description="auto (default): log when the dynamics end early in the run or the modes are learned on very "
                "different time scales (the figure says why); or linear, log.")]
YScaleQuery = Annotated[Scale, Query(description="The value axis: auto (default: what the figure's data needs), "
                                                 "linear or log.")]
Dpi = Annotated[int | None, Query(ge=MIN_DPI, le=MAX_DPI,
                                  description=f"Resolution of the PNG in dots per inch ({MIN_DPI}–{MAX_DPI}; default "
                                              f"{DEFAULT_DPI}: slides; 300: print).")]


def success(fmt: str) -> dict[str, Any]:
    """The 200 response of a plot route: its one media type (SVG text; PNG and PDF binary)."""
    schema = {"type": "string"} if fmt == "svg" else {"type": "string", "format": "binary"}
    return {"description": f"The figure ({fmt.upper()}).", "content": {FORMATS[fmt]: {"schema": schema}}}


@dataclass(frozen=True)
class SimulationPlotQuery:
    kind: str
    options: Options


async def simulation_plot_query(
    kind: Annotated[Literal["loss", "modes", "product", "similarity", "kernel", "tasks", "sharpness"], Query(
        description="What to draw: loss (with its theories and the linearised network's loss), modes (with theory), "
                    "product (W, W* and the teacher), similarity (hidden RSM), kernel (NTK distance), tasks (every "
                    "task's loss through a task sequence: forgetting), sharpness (top Hessian eigenvalues and "
                    "2/η).")] = "modes",
    time_scale: ScaleQuery = "auto",
    y_scale: YScaleQuery = "auto",
    time: Annotated[list[Annotated[float, Field(ge=0)]] | None, Query(
        max_length=MAX_TIMES,
        description=f"Times (t ≥ 0) of the product / similarity panels, repeated: time=0&time=10 (≤ {MAX_TIMES}); "
                    "each panel shows the nearest record. Default: the stage times.")] = None,
    log_time: Annotated[bool | None, Query(description="The older spelling of time_scale=log (true) or "
                                                       "time_scale=linear (false).")] = None,
) -> SimulationPlotQuery:
    if log_time is not None:
        wanted = "log" if log_time else "linear"
        if time_scale not in ("auto", wanted):
            raise _query_problem(PlotError(f"log_time={str(log_time).lower()} contradicts time_scale={time_scale}",
                                           field="log_time", fix="give time_scale alone"))
        time_scale = wanted
    if time is not None and any(not (t >= 0 and t != float("inf")) for t in time):
        raise _query_problem(PlotError("every time must be a finite number ≥ 0", field="time",
                                       fix="give times t ≥ 0 within the run, e.g. time=0&time=10"))
    try:
        options = Options(time_scale=time_scale, y_scale=y_scale, times=tuple(time) if time else None)
    except PlotError as exc:
        raise _query_problem(exc) from None
    return SimulationPlotQuery(kind, options)


@dataclass(frozen=True)
class SweepPlotQuery:
    kind: str
    x: str | None
    aggregate: str
    y_scale: str


async def sweep_plot_query(
    kind: Annotated[Literal["learning_time", "final_loss", "kernel_distance", "convergence_time", "min_test_loss",
                            "early_stopping_time"], Query(
        description="learning_time (per mode, measured and theory), final_loss (L − L*), kernel_distance (NTK), "
                    "convergence_time, min_test_loss, early_stopping_time.")] = "learning_time",
    x: Annotated[str | None, Query(max_length=200, description="The swept parameter path on the x axis (default: the "
                                                               "first axis), e.g. init.scale.")] = None,
    aggregate: Annotated[Literal["seed", "none"], Query(
        description="seed (default): mean ± sd over an axis named seed (init.seed, …); none: every seed its own "
                    f"line. One of {', '.join(AGGREGATES)}.")] = "seed",
    y_scale: YScaleQuery = "auto",
) -> SweepPlotQuery:
    return SweepPlotQuery(kind, x, aggregate, y_scale)


def _query_problem(exc: PlotError) -> ProblemError:
    return ProblemError(422, "validation-error", f"{exc.field}: {exc.message}",
                        errors=[field_error([exc.field], "invalid_query", exc.message, exc.fix, "query")])


def plot_problem(exc: Exception, what: str) -> Exception:
    """The problem for a PlotError raised while drawing ``what`` (409 not-recorded, else 422 naming the query
    parameter); any other exception as it is."""
    if not isinstance(exc, PlotError):
        return exc
    if exc.code == "not_recorded":
        return ProblemError(409, "not-recorded", f"{what}: {exc.message}; {exc.fix}")
    return _query_problem(exc)
