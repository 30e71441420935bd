"""GET /v1/sweeps/{id}/plot.svg and service.plots.render_sweep_plot: sweeps whose points are real runs
(summarised as the worker summarises them), drawn and read back as XML."""

from __future__ import annotations

import copy

import orjson
import pytest

from service.build import build_run
from service.dynamics.simulate import simulate
from service.grid import apply_params, point_summary
from service.plots import render_sweep_plot
from service.schemas import SimulationRequest
from tests.api.conftest import assert_problem, small_request
from tests.api.test_plots import strokes, texts
from tests.sweeps.test_api import create, results, store

pytestmark = pytest.mark.anyio

# 400 GD steps at η = 0.05 (t = 20): both modes (s = 2 and 0.5) are learned from every scale swept here.
BASE = small_request(training={"method": "gd", "learning_rate": 0.05, "steps": 400})
SCALES = [1e-4, 1e-3, 1e-2, 1e-1]
LEGEND_GREY = "#333333"  # the colour of the legend's style samples (matplotlib "0.2")


def run_point(base: dict, params: dict) -> dict:
    """The point's real summary and outcome, as service.jobs.sweeps stores them."""
    request = SimulationRequest.model_validate(apply_params(base, params))
    spec = build_run(request)
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    return {"outcome": traj.outcome, "summary": orjson.loads(orjson.dumps(point_summary(traj)))}


async def finished_sweep(service, grid: dict, *, finish: int | None = None) -> str:
    """A sweep over ``grid`` with its first ``finish`` points (default all) run for real and stored."""
    sweep = await create(service, grid=grid, base=BASE)
    base = sweep["request"]["base"]
    rows = (await results(service, sweep["id"]))["items"]
    done = []
    for row in rows[:finish]:
        done.append({"k": row["index"], "status": "succeeded", "error": None, "trajectory": None,
                     **run_point(base, row["parameters"])})
    store(service).mark_points_running(sweep["id"], [r["k"] for r in done])
    assert store(service).finish_points(sweep["id"], done) == len(done)
    return sweep["id"]


async def plot(service, sweep_id: str, **params):
    return await service.client.get(f"/v1/sweeps/{sweep_id}/plot.svg", params=params)


# ------------------------------------------------------------------------------------------------
# learning time


async def test_learning_time_plot_is_svg_with_labelled_axes(service):
    sweep = await finished_sweep(service, {"init.scale": SCALES})
    response = await plot(service, sweep)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    text = " ".join(texts(response.content))
    assert "learning time t_α (u_α first reaches half its final value)" in text
    assert "Learning time per mode vs init.scale — all 4 points finished" in text
    assert "mode 1" in text and "mode 2" in text and "theory: saxe_small_init (dashed)" in text


async def test_init_scale_over_three_decades_gets_a_log_x_axis(service):
    sweep = await finished_sweep(service, {"init.scale": SCALES})
    text = texts((await plot(service, sweep)).content)
    assert "init.scale  [log scale]" in text


async def test_values_within_a_decade_keep_a_linear_x_axis(service):
    sweep = await finished_sweep(service, {"training.learning_rate": [0.02, 0.05]})
    text = texts((await plot(service, sweep)).content)
    assert "training.learning_rate" in text and "training.learning_rate  [log scale]" not in text


async def test_theory_is_one_dashed_line_per_mode_in_the_colour_of_its_measurement(service):
    sweep = await finished_sweep(service, {"init.scale": SCALES})
    rows = (await results(service, sweep))["items"]
    assert all(None not in r["learning_time_theory"] for r in rows)  # the formula applies at every point
    styles = [s for s in strokes((await plot(service, sweep)).content) if s["stroke"] != LEGEND_GREY]
    dashed = [s for s in styles if "stroke-dasharray" in s]
    solid = [s for s in styles if "stroke-dasharray" not in s and s["stroke"].startswith("#")
             and s["stroke"] not in ("#000000", "#b0b0b0", "#ff0000")]  # not the frame, grid or diverged marks
    assert len(dashed) == 2                         # two modes (s = 2, 0.5), one theory curve each
    assert {s["stroke"] for s in dashed} == {s["stroke"] for s in solid}


async def test_unfinished_points_are_left_out_and_counted_in_the_title(service):
    sweep = await finished_sweep(service, {"init.scale": SCALES}, finish=2)
    text = " ".join(texts((await plot(service, sweep)).content))
    assert "2 of 4 points finished" in text


async def test_each_combination_of_the_other_axes_gets_its_own_panel(service):
    sweep = await finished_sweep(service, {"init.scale": [1e-3, 1e-1], "init.seed": [0, 1]})
    text = texts((await plot(service, sweep)).content)
    assert {"init.seed = 0", "init.seed = 1"} <= set(text)
    text = texts((await plot(service, sweep, x="init.seed")).content)
    assert {"init.scale = 0.001", "init.scale = 0.1"} <= set(text)


def test_diverged_points_are_marked_and_counted_in_the_legend():
    row = {"parameters": {"init.scale": 0.01}, "status": "succeeded", **run_point(BASE, {})}
    row = {**row, **row.pop("summary")}
    diverged = [{**copy.deepcopy(row), "parameters": {"init.scale": s}, "outcome": "diverged"} for s in (0.1, 1.0)]
    svg = render_sweep_plot([row, *diverged], ["init.scale"], "learning_time")
    assert "diverged (2 points; no value)" in texts(svg)


# ------------------------------------------------------------------------------------------------
# final loss


async def test_final_loss_plot_has_a_log_excess_loss_axis_and_one_line_per_combination(service):
    sweep = await finished_sweep(service, {"init.scale": [1e-3, 1e-1], "init.seed": [0, 1]})
    response = await plot(service, sweep, kind="final_loss")
    assert response.status_code == 200
    text = texts(response.content)
    assert "final excess loss L − L* (last record)  [log scale]" in text
    assert {"init.seed = 0", "init.seed = 1"} <= set(text)


# ------------------------------------------------------------------------------------------------
# errors


async def test_unknown_sweep_is_a_404_problem(service):
    assert_problem(await plot(service, "nope"), 404, "not-found")


async def test_x_that_is_not_a_swept_axis_is_a_422_naming_the_axes(service):
    sweep = await create(service, grid={"init.scale": [0.01, 0.1]})
    body = assert_problem(await plot(service, sweep["id"], x="init.seed"), 422, "validation-error")
    (error,) = body["errors"]
    assert error["field"] == ["x"] and "init.scale" in error["fix"]


async def test_unknown_kind_is_a_422(service):
    sweep = await create(service, grid={"init.scale": [0.01, 0.1]})
    body = assert_problem(await plot(service, sweep["id"], kind="modes"), 422, "validation-error")
    assert body["errors"][0]["field"] == ["kind"]


async def test_more_combinations_than_fit_is_a_422_suggesting_another_axis(service):
    sweep = await create(service, grid={"init.scale": [0.01, 0.1], "init.seed": list(range(7))})
    body = assert_problem(await plot(service, sweep["id"]), 422, "validation-error")
    assert "7 combinations" in body["errors"][0]["message"] and "init.seed" in body["errors"][0]["fix"]
    assert (await plot(service, sweep["id"], x="init.seed")).status_code == 200  # 2 series: fine
