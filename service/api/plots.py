"""The plots: GET /v1/simulations/{id}/plot.svg (a succeeded simulation's trajectory) and
GET /v1/sweeps/{id}/plot.svg (a sweep's results against a swept parameter), drawn by ``service.plots``.

Reading the stored arrays and rendering are CPU work, done in a worker thread, never on the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from service import codec
from service.api.deps import OwnerDep, SimulationsDep, SweepsDep
from service.api.errors import problem_responses
from service.dynamics.presets import preset_labels
from service.plots import (
    MAX_SWEEP_SERIES,
    MAX_TIMES,
    PlotError,
    render_plot,
    render_sweep_plot,
    sweep_axes,
)
from service.problems import ProblemError, field_error
from service.status import RUNNING

# what the records of a running simulation can draw (its partial trajectory: loss and mode strengths)
LIVE_KINDS = ("loss", "modes")

router = APIRouter()

SVG = "image/svg+xml"

_DESCRIPTION = f"""\
The trajectory of a succeeded simulation as an SVG figure (409 until it succeeded).

* `kind=modes` (default): mode strengths u_α(t) = u_αᵀ W(t) v_α, solid, with the analytic prediction dashed in
  the same colour; the theory model is named in the title and legend, marked "(approximate)" when its
  assumptions hold only approximately (e.g. a small random init).
* `kind=loss`: L(t) on a log axis with the optimum L* dotted; with `data.test` the test loss (red) and its
  minimum, the early-stopping point (▼), and where the loss theory applies its train and test curves dashed;
  when Σ33 is unknown the excess loss L − L* (the
  axis says so). Values ≤ 0 cannot be drawn on a log axis: the legend counts them.
* `kind=product`: heatmaps of the network map W(t) at the records nearest each `time` (default: the last)
  next to the optimum W*.
* `kind=kernel`: the neural tangent kernel's distance from its initial value, 1 − ⟨K(0), K(t)⟩/(‖K(0)‖‖K(t)‖)
  (solid; 0 is lazy), and the same distance for each hidden layer's input-side Gram P_h and output-side Gram Q_h
  (dashed, dotted), which shows the side that moves; needs `record.kernel: true` (else 409 not-recorded).
* `kind=similarity`: the hidden-layer item similarity RSM = W21ᵀW21 at the records nearest each `time`
  (default: four records spread over the run); needs `record.similarity: true` (else 409 not-recorded).

Time is t = η·step for GD. `log_time=true` puts the loss and mode plots on a log time axis (t = 0 is then
not shown). At most {MAX_TIMES} `time` values; preset problems get their item and feature names on the axes.
"""


def _labels(request_json: bytes) -> dict[str, Any] | None:
    """Item and feature names of a preset problem (None for other data or on any surprise)."""
    try:
        data = orjson.loads(request_json).get("data") or {}
        if data.get("kind") != "preset":
            return None
        params = {k: v for k, v in data.items() if k not in ("kind", "name")}
        return preset_labels(data["name"], params)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None  # labels are a nicety: a plot without them is still right


def _query_problem(exc: PlotError) -> ProblemError:
    return ProblemError(422, "validation-error", f"{exc.field}: {exc.message}",
                        errors=[field_error([exc.field], "invalid_query", exc.message, exc.fix, "query")])


@router.get(
    "/v1/simulations/{job_id}/plot.svg",
    tags=["simulations"],
    response_class=Response,
    summary="Plot a simulation's trajectory (SVG)",
    description=_DESCRIPTION,
    responses={200: {"description": "The figure.", "content": {SVG: {"schema": {"type": "string"}}}},
               **problem_responses(404, 409, 422)},
)
async def get_simulation_plot(
    job_id: Annotated[str, Path(description="The simulation id.")],
    simulations: SimulationsDep,
    owner: OwnerDep,
    kind: Annotated[Literal["loss", "modes", "product", "similarity", "kernel"], Query(
        description="What to draw: loss, modes (with theory), product (W and W*), similarity (hidden RSM), "
                    "kernel (NTK distance).")
    ] = "modes",
    log_time: Annotated[bool, Query(description="Log time axis (loss, modes and kernel).")] = False,
    time: Annotated[list[Annotated[float, Field(ge=0)]] | None, Query(
        max_length=MAX_TIMES,
        description=f"Times (t ≥ 0) of the product / similarity panels, repeated: time=0&time=10 (≤ {MAX_TIMES}); "
                    "each panel shows the nearest record.")] = None,
) -> Response:
    if time is not None:
        if len(time) > MAX_TIMES:
            raise _query_problem(PlotError(f"{len(time)} times given, at most {MAX_TIMES} panels fit", field="time",
                                           fix=f"give at most {MAX_TIMES} time values"))
        if any(not (t >= 0 and t != float("inf")) for t in time):
            raise _query_problem(PlotError("every time must be a finite number ≥ 0", field="time",
                                           fix="give times t ≥ 0 within the run, e.g. time=0&time=10"))
    row = await simulations.get(job_id, owner)
    if row.status == RUNNING and kind not in LIVE_KINDS:
        raise ProblemError(409, "not-finished", f"simulation {job_id} is running: its {kind} plot needs the finished "
                           f"run; {' and '.join(LIVE_KINDS)} are drawn from its records so far",
                           headers={"Retry-After": str(simulations.settings.retry_after_seconds)})
    labels = _labels(row.request) if kind in ("product", "similarity") else None

    def render(stored: codec.Stored) -> bytes:
        document = codec.document(codec.select(stored), codec.MEMBERS)
        return render_plot(document, kind, log_time=log_time, times=time, labels=labels, fmt="svg")

    try:
        svg = await simulations.read_trajectory(job_id, owner, render)
    except PlotError as exc:
        if exc.code == "not_recorded":
            raise ProblemError(409, "not-recorded", f"simulation {job_id}: {exc.message}; {exc.fix}") from None
        raise _query_problem(exc) from None
    return Response(svg, media_type=SVG)


SWEEP_PLOT_DESCRIPTION = f"""\
A sweep's results rows (GET /v1/sweeps/{{id}}/results) drawn against one swept parameter `x` (default: the first
grid axis), as SVG. Unfinished points are left out and the title says "k of n points finished".

* `kind=learning_time` (default): per mode, the measured learning time (first time u_α reaches half its final
  value; solid with markers) and the theory's prediction (dashed, same colour, model named in the legend).
* `kind=final_loss`: the final excess loss L − L* on a log axis; L − L* ≤ 0 (the optimum to round-off) is a ▼
  on the bottom edge.

The x axis is logarithmic when the values are positive and span more than a decade (e.g. `init.scale`);
non-numeric values (e.g. `network.hidden`) are categories. Each combination of the other axes is its own
panel (`learning_time`) or line (`final_loss`), at most {MAX_SWEEP_SERIES} (else 422: plot against another axis).
Diverged points are red × marks on the top edge, counted in the legend.
"""


@router.get(
    "/v1/sweeps/{sweep_id}/plot.svg",
    tags=["sweeps"],
    response_class=Response,
    summary="Plot a sweep's learning times or final losses against a swept parameter (SVG)",
    description=SWEEP_PLOT_DESCRIPTION,
    responses={200: {"description": "The figure.", "content": {SVG: {"schema": {"type": "string"}}}},
               **problem_responses(404, 422, d404="No sweep with this id",
                                   d422="Unknown kind, x not a swept parameter, or too many combinations of the "
                                        "other axes")},
)
async def get_sweep_plot(
    sweep_id: Annotated[str, Path(description="The sweep id.")],
    sweeps: SweepsDep,
    owner: OwnerDep,
    kind: Annotated[Literal["learning_time", "final_loss"], Query(
        description="learning_time: per-mode learning time, measured and theory; final_loss: L − L* (log).")
    ] = "learning_time",
    x: Annotated[str | None, Query(max_length=200, description="The swept parameter path on the x axis (default: "
                                                               "the first grid axis), e.g. init.scale.")] = None,
) -> Response:
    row = await sweeps.get(sweep_id, owner)
    points = await sweeps.all_points(row)
    rows = [{"parameters": orjson.loads(p.params), "status": p.status, "outcome": p.outcome, **(p.summary or {})}
            for p in points]
    try:
        svg = await run_in_threadpool(render_sweep_plot, rows, sweep_axes(orjson.loads(row.request)), kind, x)
    except PlotError as exc:
        raise _query_problem(exc) from None
    return Response(svg, media_type=SVG)
