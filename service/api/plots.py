"""The plots of a simulation, of a sweep and of a kept sweep point, as SVG, PNG or PDF, drawn by ``service.plots``:

    GET /v1/simulations/{id}/plot.svg|.png|.pdf          ?kind=&time_scale=&y_scale=&time=   (+ dpi= for .png)
    GET /v1/sweeps/{id}/plot.svg|.png|.pdf               ?kind=&x=&aggregate=&y_scale=
    GET /v1/sweeps/{id}/points/{k}/plot.svg|.png|.pdf    as a simulation's (sweeps with keep: trajectories)

Each format is a route of its own whose success response has that one media type (the generated client picks a
response's first media type). Reading the stored arrays and rendering are CPU work, done in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Response
from fastapi.concurrency import run_in_threadpool

from service import codec
from service.api.deps import OwnerDep, SimulationsDep, SweepsDep
from service.api.errors import problem_responses
from service.api.plot_params import (
    FORMATS,
    Dpi,
    SimulationPlotQuery,
    SweepPlotQuery,
    plot_document,
    plot_problem,
    simulation_plot_query,
    success,
    sweep_plot_query,
)
from service.grid import apply_params
from service.plots import render_plot, render_sweep_plot, sweep_axes
from service.plots.context import context_of
from service.problems import ProblemError
from service.status import RUNNING

# what the records of a running simulation can draw (its partial trajectory: loss and mode strengths)
LIVE_KINDS = ("loss", "modes")

router = APIRouter()

JobId = Annotated[str, Path(description="The simulation id.")]
SweepId = Annotated[str, Path(description="The sweep id.")]
PointIndex = Annotated[int, Path(ge=0, description="The point's index k (its position in the results).")]
SimQuery = Annotated[SimulationPlotQuery, Depends(simulation_plot_query)]
SweepQuery = Annotated[SweepPlotQuery, Depends(sweep_plot_query)]

SIMULATION_DESCRIPTION = """\
The trajectory of a succeeded simulation as a figure (409 until it succeeded); the same figure as SVG (`plot.svg`),
PNG (`plot.png`, `dpi` 50–600, default 150: slides) or PDF (`plot.pdf`: papers, fonts embedded).

* `kind=modes` (default): mode strengths u_α(t) = u_αᵀ W(t) v_α (solid), the theory dashed in the same colour, each
  mode's strength at the optimum u*_α dotted (s_α/c for Σ11 = c·I: the legend says which) and its learning time t½
  (●: the time a mode's strength first reaches half its strength at the optimum). Modes with s = 0 are left out;
  modes with one singular value share a colour and a legend row.
* `kind=loss`: L(t) (L − L* when Σ33 is unknown) with L* dotted; with test data the test loss, its minimum ▼ and the
  early-stopping time t_stop, and the loss theory dashed; with `record.linearized` the loss of the network linearised
  at its init (NTK fixed at K(0)) dashed green; for the noisy_teacher preset Lampinen & Ganguli's random-matrix
  prediction dash-dotted. On a log axis values below the run's round-off floor are not drawn (a grey band says where
  it is).
* `kind=product`: heatmaps of W(t) at the stage times (the modes' learning times; with test data t_stop), the last
  record, the optimum W* and a noisy teacher's W̄. Past 48 rows or columns a selection is shown and named.
* `kind=kernel`: the NTK's distance d_K from its start (black) and each hidden layer's Grams P_h, Q_h, with each
  term's share of K; log y for a lazy run (needs `record.kernel: true`, else 409 not-recorded).
* `kind=similarity`: the hidden-layer item similarity RSM = W21ᵀW21 at t = 0, the stage times and the end (needs
  `record.similarity: true`, else 409 not-recorded).
* `kind=tasks`: a task sequence (data kind `sequence`): every phase's task loss `task_loss` against t, one line per
  phase (task A, task B, …), the switch times `phase_starts` dashed, each phase's span tinted in its task's colour and
  named on the top axis; log y when the losses span more than two decades (a single task: 409 not-recorded).
* `kind=sharpness`: the top Hessian eigenvalues (`sharpness`, λ_1 = the sharpness bold) with GD's stability threshold
  `sharpness_threshold` = 2/η dashed (the edge of stability; flow and exact have none, the legend says so), and the
  training loss in a panel above (needs `record.sharpness: true`, else 409 not-recorded).

`time_scale=auto` (default) puts time on a log axis when the dynamics end early in [0, t_end] or the modes are
learned on very different time scales (the figure says why); `linear` and `log` force it (`log_time=true` is the
older spelling of `time_scale=log`). `y_scale` (auto, linear, log) for loss, modes and kernel. `time` (repeated, at
most 8) picks the records of product and similarity panels. Time is t = η·step for GD; every symbol on a figure is
defined on it. Preset problems get their item and feature names on the axes. A running simulation's loss and modes
plots draw its records so far (the other kinds are a 409 until it ends).
"""

SWEEP_DESCRIPTION = """\
A sweep's results rows (GET /v1/sweeps/{id}/results) against one swept parameter `x` (default: the first axis), as
SVG, PNG (`dpi`) or PDF. Unfinished and failed points are left out; the title counts them.

* `kind=learning_time` (default): per mode, the measured learning time (the time a mode's strength first reaches half
  its strength at the optimum; solid, markers) and the theory's (dashed).
* `kind=final_loss`: L − L* at the last record (log; ≤ 0, the optimum to round-off, is a ▼ on the bottom edge).
* `kind=kernel_distance`: the NTK's distance from its start at the last record (needs record.kernel).
* `kind=convergence_time`: the time the run converged (▲ on the top edge: did not converge).
* `kind=min_test_loss`: the least test loss (solid) and the last (dotted) (needs test data).
* `kind=early_stopping_time`: the time of the least test loss (needs test data).

An axis named `seed` (e.g. `init.seed`) is averaged over by default: mean ± one standard deviation
(`aggregate=none` draws every seed). The other axes become lines (up to 6 per panel, from the last axes) and panels
(one per combination of the rest, up to 12): the figure states the rule it applied. Log x when the values are
positive and span more than a decade; non-numbers are categories. Diverged points are red × on the top edge.
"""

POINT_DESCRIPTION = ("The kept trajectory of sweep point k drawn as a simulation's (same kinds and parameters; "
                     "sweeps with `keep: \"trajectories\"`, else 409 not-recorded).")


def _simulation_endpoint(fmt: str) -> Callable[..., Any]:
    async def render(job_id: str, simulations: Any, owner: str | None, q: SimulationPlotQuery, dpi: int | None
                     ) -> Response:
        row = await simulations.get(job_id, owner)
        if row.status == RUNNING and q.kind not in LIVE_KINDS:
            raise ProblemError(409, "not-finished", f"simulation {job_id} is running: its {q.kind} plot needs the "
                               f"finished run; {' and '.join(LIVE_KINDS)} are drawn from its records so far",
                               headers={"Retry-After": str(simulations.settings.retry_after_seconds)})
        context = context_of(orjson.loads(row.request), getattr(row, "name", None))

        def draw(stored: codec.Stored) -> bytes:
            return render_plot(plot_document(stored), q.kind, q.options, context, fmt=fmt, dpi=dpi)

        try:
            body = await simulations.read_trajectory(job_id, owner, draw)
        except Exception as exc:  # noqa: BLE001 - PlotError becomes its problem, anything else propagates
            raise plot_problem(exc, f"simulation {job_id}") from None
        return Response(body, media_type=FORMATS[fmt])

    if fmt == "png":
        async def endpoint(job_id: JobId, simulations: SimulationsDep, owner: OwnerDep, q: SimQuery,
                           dpi: Dpi = None) -> Response:
            return await render(job_id, simulations, owner, q, dpi)
    else:
        async def endpoint(job_id: JobId, simulations: SimulationsDep, owner: OwnerDep,  # type: ignore[misc]
                           q: SimQuery) -> Response:
            return await render(job_id, simulations, owner, q, None)
    return endpoint


def _sweep_endpoint(fmt: str) -> Callable[..., Any]:
    async def render(sweep_id: str, sweeps: Any, owner: str | None, q: SweepPlotQuery, dpi: int | None) -> Response:
        row = await sweeps.get(sweep_id, owner)
        points = await sweeps.all_points(row)
        rows = [{"parameters": orjson.loads(p.params), "status": p.status, "outcome": p.outcome, **(p.summary or {})}
                for p in points]
        try:
            body = await run_in_threadpool(render_sweep_plot, rows, sweep_axes(orjson.loads(row.request)), q.kind,
                                           q.x, aggregate=q.aggregate, y_scale=q.y_scale, fmt=fmt, dpi=dpi)
        except Exception as exc:  # noqa: BLE001
            raise plot_problem(exc, f"sweep {sweep_id}") from None
        return Response(body, media_type=FORMATS[fmt])

    if fmt == "png":
        async def endpoint(sweep_id: SweepId, sweeps: SweepsDep, owner: OwnerDep, q: SweepQuery,
                           dpi: Dpi = None) -> Response:
            return await render(sweep_id, sweeps, owner, q, dpi)
    else:
        async def endpoint(sweep_id: SweepId, sweeps: SweepsDep, owner: OwnerDep,  # type: ignore[misc]
                           q: SweepQuery) -> Response:
            return await render(sweep_id, sweeps, owner, q, None)
    return endpoint


def _point_endpoint(fmt: str) -> Callable[..., Any]:
    async def render(sweep_id: str, k: int, sweeps: Any, owner: str | None, q: SimulationPlotQuery, dpi: int | None
                     ) -> Response:
        row, point, doc = await sweeps.read_point_trajectory(sweep_id, k, owner, plot_document)
        request = apply_params(orjson.loads(row.request)["base"], orjson.loads(point.params))
        try:
            body = await run_in_threadpool(lambda: render_plot(doc, q.kind, q.options, context_of(request),
                                                               fmt=fmt, dpi=dpi))
        except Exception as exc:  # noqa: BLE001
            raise plot_problem(exc, f"point {k} of sweep {sweep_id}") from None
        return Response(body, media_type=FORMATS[fmt])

    if fmt == "png":
        async def endpoint(sweep_id: SweepId, k: PointIndex, sweeps: SweepsDep, owner: OwnerDep, q: SimQuery,
                           dpi: Dpi = None) -> Response:
            return await render(sweep_id, k, sweeps, owner, q, dpi)
    else:
        async def endpoint(sweep_id: SweepId, k: PointIndex, sweeps: SweepsDep, owner: OwnerDep,  # type: ignore[misc]
                           q: SimQuery) -> Response:
            return await render(sweep_id, k, sweeps, owner, q, None)
    return endpoint


for _fmt in FORMATS:
    _suffix = "" if _fmt == "svg" else f"_{_fmt}"
    _what = {"svg": "SVG", "png": "PNG", "pdf": "PDF"}[_fmt]
    router.add_api_route(
        f"/v1/simulations/{{job_id}}/plot.{_fmt}", _simulation_endpoint(_fmt), methods=["GET"],
        name=f"get_simulation_plot{_suffix}", tags=["simulations"], response_class=Response,
        summary=f"Plot a simulation's trajectory ({_what})", description=SIMULATION_DESCRIPTION,
        responses={200: success(_fmt), **problem_responses(404, 409, 422)})
    router.add_api_route(
        f"/v1/sweeps/{{sweep_id}}/plot.{_fmt}", _sweep_endpoint(_fmt), methods=["GET"],
        name=f"get_sweep_plot{_suffix}", tags=["sweeps"], response_class=Response,
        summary=f"Plot a sweep's results against a swept parameter ({_what})", description=SWEEP_DESCRIPTION,
        responses={200: success(_fmt), **problem_responses(
            404, 409, 422, d404="No sweep with this id",
            d409="not-recorded: the sweep's points did not record what this kind draws",
            d422="Unknown kind, x not a swept parameter, or another parameter out of its domain")})
    router.add_api_route(
        f"/v1/sweeps/{{sweep_id}}/points/{{k}}/plot.{_fmt}", _point_endpoint(_fmt), methods=["GET"],
        name=f"get_sweep_point_plot{_suffix}", tags=["sweeps"], response_class=Response,
        summary=f"Plot one sweep point's kept trajectory ({_what})", description=POINT_DESCRIPTION,
        responses={200: success(_fmt), **problem_responses(
            404, 409, 422, d404="No sweep with this id, or no point k in it",
            d409="not-recorded: the sweep has keep: \"summary\" (or the run did not record what this kind draws); "
                 "not-finished: the point has not succeeded (yet)")})
