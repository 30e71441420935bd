"""Sweep plots (service.plots.sweeps) and their routes, GET /v1/sweeps/{id}/plot.svg|png|pdf and the kept points'
GET /v1/sweeps/{id}/points/{k}/plot.*: sweeps whose points are real runs (summarised as the worker summarises them),
the Figure objects inspected and the SVG read back as XML."""

from __future__ import annotations

import copy

import numpy as np
import orjson
import pytest

from service.build import build_run
from service.dynamics.simulate import simulate
from service.grid import apply_params, point_summary
from service.plots import PlotError, render_sweep_plot, sweep_figure
from service.schemas import SimulationRequest
from tests.api.conftest import assert_problem, small_request
from tests.support.figures import legend_texts, texts
from tests.support.sweeps import create, results, store
from tests.support.trajectories import packed, trajectory_document

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
    assert ("learning time t½: the time a mode's strength first reaches half its strength at the optimum"
            in " ".join(text.split()))
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
    ax = sweep_figure(_rows(rows), ["init.scale"], "learning_time").axes[0]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and ln.get_marker() == "o"]
    assert len(dashed) == len(solid) == 2              # two modes (s = 2, 0.5), one theory curve each
    assert {ln.get_color() for ln in dashed} == {ln.get_color() for ln in solid}


def _rows(items: list[dict]) -> list[dict]:
    """Results rows (GET …/results) as the plot reads them."""
    return [{**r, "parameters": r["parameters"]} for r in items]


async def test_unfinished_points_are_left_out_and_counted_in_the_title(service):
    sweep = await finished_sweep(service, {"init.scale": SCALES}, finish=2)
    text = " ".join(texts((await plot(service, sweep)).content))
    assert "2 of 4 points finished" in text


async def test_each_combination_of_the_other_axes_gets_its_own_panel(service):
    sweep = await finished_sweep(service, {"init.scale": [1e-3, 1e-1], "training.learning_rate": [0.02, 0.05]})
    text = texts((await plot(service, sweep)).content)
    assert {"training.learning_rate = 0.02", "training.learning_rate = 0.05"} <= set(text)
    text = texts((await plot(service, sweep, x="training.learning_rate")).content)
    assert {"init.scale = 0.001", "init.scale = 0.1"} <= set(text)


def test_diverged_points_are_marked_and_counted_in_the_legend():
    row = {"parameters": {"init.scale": 0.01}, "status": "succeeded", **run_point(BASE, {})}
    row = {**row, **row.pop("summary")}
    diverged = [{**copy.deepcopy(row), "parameters": {"init.scale": s}, "outcome": "diverged"} for s in (0.1, 1.0)]
    svg = render_sweep_plot([row, *diverged], ["init.scale"], "learning_time")
    assert "diverged: 2 points (no value)" in texts(svg)


# ------------------------------------------------------------------------------------------------
# final loss


async def test_final_loss_plot_has_a_log_excess_loss_axis_and_one_line_per_combination(service):
    sweep = await finished_sweep(service, {"init.scale": [1e-3, 1e-1], "training.learning_rate": [0.02, 0.05]})
    response = await plot(service, sweep, kind="final_loss")
    assert response.status_code == 200
    text = texts(response.content)
    assert "L − L* at the last record  [log scale]" in text
    assert {"training.learning_rate = 0.02", "training.learning_rate = 0.05"} <= set(text)


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


async def test_more_combinations_than_fit_become_small_multiples_with_the_rule_stated(service):
    sweep = await create(service, grid={"init.scale": [0.01, 0.1], "training.learning_rate": [0.01, 0.02, 0.03, 0.04,
                                                                                              0.05, 0.06, 0.07]})
    response = await plot(service, sweep["id"], kind="final_loss", x="init.scale")
    assert response.status_code == 200                    # 7 combinations: no refusal
    assert "one panel per training.learning_rate" in " ".join(texts(response.content))


# ------------------------------------------------------------------------------------------------
# seeds, small multiples, new kinds


def _summary_rows(base: dict, grid: dict) -> list[dict]:
    from service.grid import expand_grid

    out = []
    for params, _ in expand_grid(grid):
        point = run_point(base, params)
        out.append({"parameters": params, "status": "succeeded", "outcome": point["outcome"], **point["summary"]})
    return out


SEEDED = {"init.scale": [1e-3, 1e-1], "init.seed": [0, 1, 2]}


def test_a_seed_axis_is_averaged_as_mean_and_sd_by_default():
    rows = _summary_rows(BASE, SEEDED)
    fig = sweep_figure(rows, list(SEEDED), "final_loss")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 1           # no panel per seed
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    y = np.array([r["final_excess_loss"] for r in rows]).reshape(2, 3)
    np.testing.assert_allclose(line.get_ydata(), y.mean(axis=1), rtol=1e-12)
    assert ax.containers                                                    # the ± sd error bars
    assert any("mean ± sd over init.seed" in t for t in legend_texts(fig))


def test_aggregate_none_draws_each_seed_as_its_own_line():
    rows = _summary_rows(BASE, SEEDED)
    ax = sweep_figure(rows, list(SEEDED), "final_loss", aggregate="none").axes[0]
    assert len([ln for ln in ax.get_lines() if ln.get_marker() == "o"]) == 3 and not ax.containers


def test_small_multiples_put_the_last_axes_that_fit_on_lines_and_the_rest_on_panels():
    rows = [{"parameters": {"a": a, "b": b, "c": c}, "status": "succeeded", "outcome": "converged",
             "final_excess_loss": 1.0 + a + b + c} for a in range(3) for b in range(4) for c in range(3)]
    fig = sweep_figure(rows, ["a", "b", "c"], "final_loss", x="a")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4 and panels[0].get_title() == "b = 0"       # c: 3 lines; b × c = 12 > 6: b panels
    assert len([ln for ln in panels[0].get_lines() if ln.get_marker() == "o"]) == 3
    assert any("one panel per b; one line per c" in t for t in legend_texts(fig))
    fig = sweep_figure(rows, ["a", "b", "c"], "final_loss", x="c")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 3 and panels[0].get_title() == "a = 0"       # b: 4 lines; a × b = 12 > 6: a panels
    assert len([ln for ln in panels[0].get_lines() if ln.get_marker() == "o"]) == 4


def test_more_panels_than_fit_are_cut_and_the_figure_says_how_many():
    rows = [{"parameters": {"x": x, "p": p, "q": q}, "status": "succeeded", "outcome": "converged",
             "final_excess_loss": 1.0} for x in (1, 2) for p in range(5) for q in range(7)]
    fig = sweep_figure(rows, ["x", "p", "q"], "final_loss")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 7           # q (7 > 6) panels, p (5) lines
    rows = [{**r, "parameters": {**r["parameters"], "r": r_}} for r in rows for r_ in range(3)]
    fig = sweep_figure(rows, ["x", "p", "q", "r"], "final_loss")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 12          # p × q = 35 panels: the first 12
    assert any("23 more panels not shown (first 12 in grid order)" in t for t in legend_texts(fig))


KERNEL_BASE = small_request(training={"method": "flow", "t_max": 6.0}, record={"points": 30, "kernel": True})
TEST_BASE = {"data": {"kind": "preset", "name": "noisy_teacher", "n_in": 4, "n_out": 4, "n_samples": 4, "noise": 0.5,
                      "singular_values": [2.0, 1.0]}, "network": {"hidden": [4]},
             "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
             "training": {"method": "gd", "learning_rate": 0.05, "steps": 800}, "record": {"points": 80}}


def test_kernel_distance_kind_draws_the_final_ntk_distance():
    rows = _summary_rows(KERNEL_BASE, {"init.scale": [1e-2, 1e-1, 1.0]})
    ax = sweep_figure(rows, ["init.scale"], "kernel_distance").axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    np.testing.assert_allclose(line.get_ydata(), [r["final_kernel_distance"] for r in rows])
    assert "d_K" in ax.get_ylabel()


def test_convergence_time_kind_marks_the_runs_that_did_not_converge():
    rows = _summary_rows(BASE, {"init.scale": [1e-3, 1e-1]})
    rows.append({**rows[0], "parameters": {"init.scale": 1.0}, "time_to_convergence": None})
    fig = sweep_figure(rows, ["init.scale"], "convergence_time")
    assert any(t.startswith("did not converge within the run (1 point)") for t in legend_texts(fig))


def test_test_loss_kinds_draw_the_least_and_last_test_loss_and_the_early_stopping_time():
    rows = _summary_rows(TEST_BASE, {"data.noise": [0.25, 1.0]})
    ax = sweep_figure(rows, ["data.noise"], "min_test_loss").axes[0]
    least, last = (next(ln for ln in ax.get_lines() if ln.get_marker() == m) for m in ("o", "s"))
    np.testing.assert_allclose(least.get_ydata(), [r["min_test_loss"] for r in rows])
    np.testing.assert_allclose(last.get_ydata(), [r["final_test_loss"] for r in rows])
    ax = sweep_figure(rows, ["data.noise"], "early_stopping_time").axes[0]
    (line,) = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    np.testing.assert_allclose(line.get_ydata(), [r["early_stopping_time"] for r in rows])


def test_a_kind_the_sweep_did_not_record_is_a_not_recorded_plot_error():
    rows = _summary_rows(BASE, {"init.scale": [1e-3, 1e-1]})
    for kind in ("kernel_distance", "min_test_loss", "early_stopping_time"):
        with pytest.raises(PlotError) as info:
            sweep_figure(rows, ["init.scale"], kind)
        assert info.value.code == "not_recorded"


async def test_kernel_distance_of_a_sweep_without_the_kernel_is_a_409(service):
    sweep = await finished_sweep(service, {"init.scale": [1e-3, 1e-1]})
    body = assert_problem(await plot(service, sweep, kind="kernel_distance"), 409, "not-recorded")
    assert "record.kernel" in body["detail"]


@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG"), ("pdf", b"%PDF-")])
async def test_sweep_plots_come_as_png_and_pdf(service, fmt, magic):
    sweep = await finished_sweep(service, {"init.scale": SCALES})
    response = await service.client.get(f"/v1/sweeps/{sweep}/plot.{fmt}")
    assert response.status_code == 200 and response.content.startswith(magic)


# ------------------------------------------------------------------------------------------------
# a kept point's plot


async def test_a_kept_points_trajectory_is_plotted_like_a_simulations(service):
    sweep = await create(service, grid={"init.scale": [0.01, 0.1]}, base=BASE, keep="trajectories")
    base = sweep["request"]["base"]
    request = SimulationRequest.model_validate(apply_params(base, {"init.scale": 0.1}))
    spec = build_run(request)
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    document = orjson.loads(orjson.dumps(trajectory_document(traj)))
    done = {"k": 1, "status": "succeeded", "error": None, "outcome": traj.outcome,
            "summary": orjson.loads(orjson.dumps(point_summary(traj))), "trajectory": packed(document)}
    store(service).mark_points_running(sweep["id"], [1])
    assert store(service).finish_points(sweep["id"], [done]) == 1
    for fmt, media in (("svg", "image/svg+xml"), ("png", "image/png"), ("pdf", "application/pdf")):
        response = await service.client.get(f"/v1/sweeps/{sweep['id']}/points/1/plot.{fmt}", params={"kind": "loss"})
        assert response.status_code == 200 and response.headers["content-type"] == media
    svg = (await service.client.get(f"/v1/sweeps/{sweep['id']}/points/1/plot.svg")).content
    assert "mode strength u_α(t) = u_αᵀ W(t) v_α" in " ".join(texts(svg))
    assert_problem(await service.client.get(f"/v1/sweeps/{sweep['id']}/points/0/plot.svg"), 409, "not-finished")
    assert_problem(await service.client.get(f"/v1/sweeps/{sweep['id']}/points/5/plot.svg"), 404, "not-found")


async def test_a_summary_sweeps_point_plot_is_409_not_recorded(service):
    sweep = await finished_sweep(service, {"init.scale": [0.01, 0.1]})
    body = assert_problem(await service.client.get(f"/v1/sweeps/{sweep}/points/0/plot.svg"), 409, "not-recorded")
    assert 'keep: "trajectories"' in body["detail"]
