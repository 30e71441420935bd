"""GET /v1/plots/compare.svg|.png|.pdf?simulation=<id>&simulation=<id>…&kind=loss|modes|kernel|sharpness: several
succeeded simulations in one figure (lazy vs rich, GD at several learning rates against the theory or at its edge of
stability), drawn by ``service.plots.compare``. The legend names each run by its ``name`` and ``tags`` when the
simulation has them, else by its id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Response
from fastapi.concurrency import run_in_threadpool

from service.api.deps import OwnerDep, SimulationsDep
from service.api.errors import problem_responses
from service.api.plot_params import FORMATS, Dpi, ScaleQuery, YScaleQuery, plot_document, plot_problem, success
from service.plots import MAX_RUNS, Options, PlotError, render_compare
from service.plots.context import context_of, run_label
from service.problems import ProblemError, field_error

router = APIRouter()

DESCRIPTION = f"""\
Up to {MAX_RUNS} succeeded simulations in one figure, one colour each, named in the legend by the simulation's
`name` and `tags` (else its id); as SVG, PNG (`dpi`) or PDF.

* `kind=loss`: each run's training loss (solid) and test loss (dashed).
* `kind=modes`: each run's mode strengths (solid) and its theory (dashed), in the run's colour.
* `kind=kernel`: each run's NTK distance from its start d_K(t) (needs `record.kernel: true`); log y when some run
  stays lazy, so that lazy and rich runs show on one axis.
* `kind=sharpness`: each run's sharpness S(t), the top Hessian eigenvalue of the loss (needs `record.sharpness: true`),
  and its edge of stability 2/η dashed in the same colour: GD at several learning rates, each sharpening to its own
  2/η (Cohen et al. 2021), beside a flow run, which has no threshold. The legend says when each run reaches it.

The time axis is shared (`time_scale` as for a simulation's plot). 404 for an id that is unknown (or another key's),
409 for one that has not succeeded.
"""


async def _compare_query(
    simulation: Annotated[list[str], Query(min_length=1, max_length=MAX_RUNS,
                                           description=f"The simulation ids, repeated (1 to {MAX_RUNS}).")],
    kind: Annotated[Literal["loss", "modes", "kernel", "sharpness"],
                    Query(description="What to draw: loss, modes, kernel, sharpness.")] = "loss",
    time_scale: ScaleQuery = "auto",
    y_scale: YScaleQuery = "auto",
) -> tuple[list[str], str, Options]:
    ids = list(dict.fromkeys(simulation))
    return ids, kind, Options(time_scale=time_scale, y_scale=y_scale)


CompareQuery = Annotated[tuple[list[str], str, Options], Depends(_compare_query)]


def _endpoint(fmt: str) -> Callable[..., Any]:
    async def render(simulations: Any, owner: str | None, query: tuple[list[str], str, Options], dpi: int | None
                     ) -> Response:
        ids, kind, options = query
        runs = []
        for job_id in ids:
            row = await simulations.get(job_id, owner)
            doc = await simulations.read_trajectory(job_id, owner, plot_document)
            label = run_label(job_id, getattr(row, "name", None), getattr(row, "tags", None))
            runs.append((label, doc, context_of(orjson.loads(row.request), label)))
        try:
            body = await run_in_threadpool(lambda: render_compare(runs, kind, options, fmt=fmt, dpi=dpi))
        except PlotError as exc:
            if exc.code == "not_recorded":
                raise plot_problem(exc, "comparison") from None
            raise ProblemError(422, "validation-error", f"{exc.field}: {exc.message}", errors=[
                field_error([exc.field], "invalid_query", exc.message, exc.fix, "query")]) from None
        return Response(body, media_type=FORMATS[fmt])

    if fmt == "png":
        async def endpoint(simulations: SimulationsDep, owner: OwnerDep, query: CompareQuery,
                           dpi: Dpi = None) -> Response:
            return await render(simulations, owner, query, dpi)
    else:
        async def endpoint(simulations: SimulationsDep, owner: OwnerDep,  # type: ignore[misc]
                           query: CompareQuery) -> Response:
            return await render(simulations, owner, query, None)
    return endpoint


for _fmt in FORMATS:
    router.add_api_route(
        f"/v1/plots/compare.{_fmt}", _endpoint(_fmt), methods=["GET"],
        name="get_comparison_plot" + ("" if _fmt == "svg" else f"_{_fmt}"), tags=["plots"], response_class=Response,
        summary=f"Several simulations in one figure ({_fmt.upper()})", description=DESCRIPTION,
        responses={200: success(_fmt), **problem_responses(
            404, 409, 422, d404="No simulation with one of these ids",
            d409="One of the simulations has not succeeded, or did not record what this kind draws")})
