"""Figures of a simulation (service.plots) and their routes (GET /v1/simulations/{id}/plot.svg|png|pdf): real
trajectories drawn, the Figure objects inspected (scales, lines, legends, labels), the bytes checked by format."""

from __future__ import annotations

import copy
import re
import struct
import xml.etree.ElementTree as ET

import numpy as np
import orjson
import pytest

from service.plots import Options, PlotError, nearest_records, plot_figure, render_plot
from service.plots.context import context_of, run_label
from service.plots.loss import roundoff_floor
from service.schemas import SimulationRequest
from tests.api.conftest import assert_problem, small_request
from tests.support.figures import (
    RUNS,
    SVG_NS,
    all_text,
    context,
    doc,
    legend_texts,
    legends,
    lines_by_gid,
    texts,
)
from tests.support.real_runs import (
    HIERARCHY_GD,
    TEACHER_FLOW,
    create_finished,
    run_document,
)

pytestmark = pytest.mark.anyio

async def plot(service, job_id: str, fmt: str = "svg", **params):
    return await service.client.get(f"/v1/simulations/{job_id}/plot.{fmt}", params=params)


# ------------------------------------------------------------------------------------------------
# modes


def test_modes_figure_has_one_simulated_and_one_dashed_theory_line_per_mode():
    fig = plot_figure(doc("gd"), "modes")
    ax = fig.axes[0]
    k = len(doc("gd")["modes"]["singular_values"])
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and ln.get_alpha() == 0.55]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(solid) == k and len(dashed) == k
    assert {tuple(ln.get_color()) for ln in solid} == {tuple(ln.get_color()) for ln in dashed}


def test_modes_legend_names_the_theory_model_and_says_exact_or_approximate():
    assert any("theory, saxe_small_init (approximate)" in t for t in legend_texts(plot_figure(doc("gd"), "modes")))
    exact = legend_texts(plot_figure(doc("exact"), "modes"))
    assert any(f"{doc('exact')['modes']['theory_model']} (exact)" in t for t in exact)


def test_modes_without_a_theory_say_so_and_draw_nothing_dashed():
    fig = plot_figure(doc("teacher"), "modes")
    assert "no analytic prediction applies to this setting" in legend_texts(fig)
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]


def test_a_mode_with_zero_singular_value_is_left_out_and_counted():
    fig = plot_figure(doc("lazy"), "modes")            # whitened 4 × 4 with three singular values: s_4 = 0
    texts_ = legend_texts(fig)
    assert "mode 4 with s = 0 not shown: nothing to learn" in texts_
    assert not any(t.startswith("mode 4:") for t in texts_)


def test_modes_with_one_singular_value_share_one_legend_row():
    texts_ = legend_texts(plot_figure(doc("hierarchy"), "modes"))
    assert any(t.startswith("modes 3–4: s = 0.2165 (×2)") for t in texts_)
    assert any(t.startswith("modes 5–8: s = 0.125 (×4), u* = 1") for t in texts_)


def test_modes_legend_explains_the_asymptote_as_s_over_c():
    texts_ = legend_texts(plot_figure(doc("hierarchy"), "modes"))   # one-hot items, mean statistics: Σ11 = I/8
    assert any("u*_α = s_α/c: Σ11 = c·I with c = 1/8, so strengths level off at 8·s_α" in t for t in texts_)
    assert any("u*_α = s_α: the strength at the optimum (Σ11 = I)" in t for t in legend_texts(plot_figure(doc("lazy"),
                                                                                                        "modes")))


def test_learning_times_are_marked_at_half_the_strength_at_the_optimum():
    d = doc("hierarchy")
    ax = plot_figure(d, "modes").axes[0]
    marks = [ln for ln in ax.get_lines() if ln.get_marker() == "o" and len(ln.get_xdata()) == 1]
    points = sorted((float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in marks)
    expected = sorted(zip(d["modes"]["learning_time"], np.array(d["modes"]["optimum_strength"]) / 2, strict=True))
    np.testing.assert_allclose(points, expected, rtol=1e-12)


def test_every_symbol_of_the_modes_figure_is_defined_on_it():
    text = all_text(plot_figure(doc("hierarchy"), "modes"))
    for definition in ("u_α(t) = u_αᵀ W(t) v_α", "Σ31 = U S Vᵀ", "u*_α, the strength at the optimum",
                       "t½: the time a mode's strength first reaches half its strength at the optimum"):
        assert definition in text, definition


# ------------------------------------------------------------------------------------------------
# the time axis


def test_auto_time_axis_is_log_when_the_dynamics_end_early():
    ax = plot_figure(doc("lazy"), "modes").axes[0]       # lazy: settled by t ≈ 0.08 of t_end = 4
    assert ax.get_xscale() == "log" and "[log scale; t = 0 not shown]" in ax.get_xlabel()
    assert ax.get_xlim()[0] == pytest.approx(doc("lazy")["time"][1])
    assert any("log time axis: settled by t ≈" in t for t in legend_texts(ax.figure))


def test_auto_time_axis_is_linear_when_the_dynamics_fill_the_run():
    assert plot_figure(doc("hierarchy"), "modes").axes[0].get_xscale() == "linear"


def test_auto_time_axis_is_log_when_the_modes_are_learned_on_very_different_time_scales():
    d = doc("noisy")
    lt = np.array([v for v in d["modes"]["learning_time"] if v is not None])
    assert lt.max() > 20 * lt.min()
    fig = plot_figure(d, "loss")
    assert fig.axes[0].get_xscale() == "log"
    assert any("the modes are learned on time scales from" in t for t in legend_texts(fig))


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_an_asked_time_scale_is_obeyed(scale):
    for kind in ("loss", "modes", "kernel"):
        assert plot_figure(doc("lazy"), kind, Options(time_scale=scale)).axes[0].get_xscale() == scale


@pytest.mark.parametrize("kind", ["loss", "modes", "kernel"])
def test_legends_are_outside_the_axes_never_over_data(kind):
    fig = plot_figure(doc("lazy"), kind)
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    box = ax.get_window_extent(renderer)
    for legend in legends(fig):
        assert not legend.get_window_extent(renderer).overlaps(box)


# ------------------------------------------------------------------------------------------------
# loss


def test_loss_values_below_the_round_off_floor_are_not_drawn():
    d = doc("flow_end")                                   # flow on to t = 40 long after converging: round-off tail
    fig = plot_figure(d, "loss", context=context("flow_end"))
    ax = fig.axes[0]
    floor = roundoff_floor(d, context("flow_end"))
    assert np.min(d["loss"]) < floor                      # there is a tail to leave out
    drawn = ax.get_lines()[0].get_ydata()
    assert np.all(drawn > floor)
    assert ax.get_ylim()[0] == pytest.approx(floor / 10)
    assert any(t.startswith("round-off floor ≈") and "not drawn" in t for t in legend_texts(fig))


def test_loss_plot_draws_the_test_loss_its_minimum_and_early_stopping_time():
    d = doc("noisy")
    fig = plot_figure(d, "loss", context=context("noisy"))
    texts_ = legend_texts(fig)
    stop = d["early_stopping"]
    assert "L_test(t): test loss, E_test ‖y − W x‖²" in texts_
    assert f"min L_test = {stop['test_loss']:.4g}" in texts_
    assert any(t.startswith(f"t_stop = {stop['time']:.4g}: early stopping") for t in texts_)
    marks = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "v"]
    assert [(float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in marks] == [(stop["time"], stop["test_loss"])]


def test_loss_axis_is_log_and_names_the_loss():
    ax = plot_figure(doc("teacher"), "loss").axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss L  [log scale]"
    loss_star = doc("teacher")["optimum"]["loss"]
    assert f"L* = {loss_star:.4g}: least loss of a rank-3 map" in legend_texts(ax.figure)


def test_loss_without_sigma33_is_the_excess_loss_and_the_axis_says_so():
    assert doc("exact")["loss"] is None
    ax = plot_figure(doc("exact"), "loss").axes[0]
    assert "excess loss L − L*" in ax.get_ylabel() and "Σ33 was not given" in ax.get_ylabel()


def test_y_scale_linear_draws_the_loss_on_a_linear_axis():
    assert plot_figure(doc("teacher"), "loss", Options(y_scale="linear")).axes[0].get_yscale() == "linear"


# ------------------------------------------------------------------------------------------------
# product and similarity


def test_product_panels_default_to_the_stage_times_the_last_record_and_the_optimum():
    d = doc("hierarchy")
    titles = [ax.get_title() for ax in plot_figure(d, "product").axes if ax.get_images()]
    lt = d["modes"]["learning_time"]
    first_at_or_after = [d["time"][int(np.searchsorted(d["time"], lt[a] * (1 - 1e-12)))] for a in (0, 1, 2, 4)]
    assert titles[:4] == [f"W(t = {t:.4g})\nt½ of {m}" for t, m in zip(
        first_at_or_after, ("mode 1", "mode 2", "modes 3–4", "modes 5–8"), strict=True)]
    assert titles[4] == f"W(t = {d['time'][-1]:.4g})\nlast record" and titles[5].startswith("W*: the optimum")


def test_a_stage_far_from_any_record_says_so():
    d = copy.deepcopy(doc("hierarchy"))
    keep = list(range(0, len(d["time"]), 20))             # records 8 time units apart
    for member in ("time", "product"):
        d[member] = [d[member][i] for i in keep]
    d["modes"]["strength"] = [d["modes"]["strength"][i] for i in keep]
    titles = [ax.get_title() for ax in plot_figure(d, "product").axes if ax.get_images()]
    assert titles[0] == "W(t = 8.081)\nfirst record after t½ of modes 1–2 = 4.27"


def test_noisy_teacher_product_shows_the_early_stopping_map_and_the_teacher():
    d = doc("noisy")
    fig = plot_figure(d, "product", context=context("noisy"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles[0].startswith("W(t_stop = ") and "least L_test" in titles[0]
    assert titles[-1] == "W̄: the teacher\n(noise-free map)"
    teacher = fig.axes[len(titles) - 1].get_images()[0].get_array()
    assert teacher.shape == (8, 8) and np.linalg.matrix_rank(np.asarray(teacher)) == 3   # rank-3 teacher


def test_small_heatmaps_have_whole_number_ticks():
    for kind in ("product", "similarity"):
        for ax in plot_figure(doc("gd"), kind).axes:
            if ax.get_images():
                for ticks in (ax.get_xticks(), ax.get_yticks()):
                    assert np.all(ticks == np.round(ticks)) and np.all(ticks >= 0)


def test_a_large_product_shows_a_selection_and_says_which():
    d = copy.deepcopy(doc("exact"))
    rng = np.random.default_rng(0)
    big = rng.standard_normal((300, 2))
    big[7] *= 50                                            # one feature much stronger than the rest
    d["product"] = [big.tolist()] * len(d["time"])
    d["optimum"]["product"] = big.tolist()
    fig = plot_figure(d, "product", Options(times=(0.0,)))
    panel = next(ax for ax in fig.axes if ax.get_images())
    assert panel.get_images()[0].get_array().shape == (48, 2)
    assert "48 of 300 output features shown: those with the largest norm in W*" in fig.get_suptitle()
    image = np.asarray(panel.get_images()[0].get_array())
    assert np.any(np.all(np.isclose(image, big[7]), axis=1))             # the strong feature is among them


def test_similarity_panels_default_to_the_start_the_stage_times_and_the_end():
    titles = [ax.get_title() for ax in plot_figure(doc("hierarchy"), "similarity").axes if ax.get_images()]
    assert titles[0] == "t = 0\nstart" and titles[-1].endswith("last record")
    assert all("t½ of" in t for t in titles[1:-1]) and len(titles) == 5


def test_times_pick_the_nearest_records():
    d = doc("gd")
    titles = [ax.get_title() for ax in plot_figure(d, "product", Options(times=(7.0,))).axes if ax.get_images()]
    assert titles[0] == f"W(t = {min(d['time'], key=lambda t: abs(t - 7.0)):.4g})"


def test_nearest_records_picks_the_closest_record_once():
    assert nearest_records([0.0, 1.0, 2.0, 4.0], [0.4, 2.9, 3.1, 100.0, 3.9]) == [0, 2, 3]


# ------------------------------------------------------------------------------------------------
# kernel


def test_a_lazy_runs_kernel_distance_is_drawn_on_a_log_axis_where_it_shows():
    fig = plot_figure(doc("lazy"), "kernel")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    ntk = ax.get_lines()[0]
    assert ntk.get_color() == "k" and np.all(ntk.get_ydata() > 0) and np.max(ntk.get_ydata()) < 1e-3
    assert any("≈ 0: lazy" in t for t in legend_texts(fig))


def test_a_rich_runs_kernel_distance_is_on_a_linear_axis_from_zero():
    ax = plot_figure(doc("rich"), "kernel").axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0.0


def test_kernel_legend_gives_each_terms_share_and_defines_its_symbols():
    texts_ = legend_texts(plot_figure(doc("lazy"), "kernel"))
    share = next(t for t in texts_ if t.startswith("share of Σ_l ‖Q_l ⊗ P_(l−1)‖"))
    assert "Q_1⊗I" in share and "I⊗P_1 99." in share           # lazy: the large input-side Gram carries K
    assert any(t.startswith("d_A(t) = 1 − ⟨A(0), A(t)⟩_F / (‖A(0)‖_F ‖A(t)‖_F)") for t in texts_)
    assert "d of P_1 = W21ᵀW21 (input side)" in texts_ and "d of Q_1 = W32W32ᵀ (output side)" in texts_


def test_plot_of_what_was_not_recorded_is_a_plot_error_saying_not_recorded():
    for kind in ("kernel", "similarity"):
        with pytest.raises(PlotError) as info:
            plot_figure(doc("teacher"), kind)
        assert info.value.code == "not_recorded"


def test_render_plot_refuses_an_unknown_kind():
    with pytest.raises(PlotError) as info:
        render_plot(doc("exact"), "histogram")
    assert info.value.field == "kind"


def test_run_labels_are_name_and_tags_when_given_else_the_id():
    assert run_label("abc") == "abc"
    assert run_label("abc", "lazy", ["λ=-25", "exact"]) == "lazy [λ=-25, exact]"


# ------------------------------------------------------------------------------------------------
# the routes: formats


async def test_svg_route_answers_svg_with_the_figures_text(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    response = await plot(service, job, kind="modes")
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    assert "mode strength u_α(t) = u_αᵀ W(t) v_α" in " ".join(texts(response.content))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


async def test_png_route_answers_a_png_at_the_asked_dpi(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    small = await plot(service, job, "png", kind="loss", dpi=60)
    large = await plot(service, job, "png", kind="loss", dpi=180)
    assert small.headers["content-type"] == large.headers["content-type"] == "image/png"
    (w1, h1), (w3, h3) = _png_size(small.content), _png_size(large.content)
    assert w3 == pytest.approx(3 * w1, abs=3) and h3 == pytest.approx(3 * h1, abs=3)
    assert w1 == pytest.approx(10.0 * 60, abs=2)          # the loss figure is 10 inches wide


async def test_png_default_dpi_is_150(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    assert _png_size((await plot(service, job, "png", kind="loss")).content)[0] == pytest.approx(1500, abs=2)


async def test_pdf_route_answers_a_pdf(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    response = await plot(service, job, "pdf", kind="modes")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.content[:5] == b"%PDF-" and response.content.rstrip().endswith(b"%%EOF")


@pytest.mark.parametrize("dpi", ["10", "2000", "many"])
async def test_a_dpi_out_of_range_is_a_422_naming_it(service, dpi):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    body = assert_problem(await plot(service, job, "png", dpi=dpi), 422)
    assert body["errors"][0]["field"] == ["dpi"]


async def test_dpi_on_the_svg_route_is_an_unknown_parameter(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    body = assert_problem(await plot(service, job, "svg", dpi=100), 400, "unknown-query-parameter")
    assert body["errors"][0]["field"] == ["dpi"]


async def test_log_time_true_is_the_older_spelling_of_time_scale_log(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    text = " ".join(texts((await plot(service, job, kind="modes", log_time="true")).content))
    assert "[log scale; t = 0 not shown]" in text
    body = assert_problem(await plot(service, job, log_time="true", time_scale="linear"), 422)
    assert body["errors"][0]["field"] == ["log_time"]


# ------------------------------------------------------------------------------------------------
# the routes: errors


async def test_plot_of_an_unknown_simulation_is_a_404(service):
    for fmt in ("svg", "png", "pdf"):
        assert_problem(await plot(service, "nope", fmt), 404, "not-found")


async def test_plot_before_success_is_a_409(service):
    response = await service.client.post("/v1/simulations", content=orjson.dumps(small_request()),
                                         headers={"content-type": "application/json"})
    body = assert_problem(await plot(service, response.json()["id"]), 409, "not-finished")
    assert "queued" in body["detail"]


@pytest.mark.parametrize(("params", "field"), [
    ({"kind": "histogram"}, "kind"),
    ({"time_scale": "sideways"}, "time_scale"),
    ({"y_scale": "cubic"}, "y_scale"),
    ({"log_time": "maybe"}, "log_time"),
    ({"kind": "product", "time": "-1"}, "time"),
    ({"kind": "product", "time": "inf"}, "time"),
    ({"kind": "product", "time": [str(t) for t in range(9)]}, "time"),
])
async def test_bad_query_parameters_are_422_naming_the_parameter(service, params, field):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    body = assert_problem(await plot(service, job, **params), 422)
    assert body["errors"][0]["field"][0] == field and body["errors"][0]["in"] == "query"


@pytest.mark.parametrize("kind", ["similarity", "kernel", "sharpness"])
async def test_plot_of_what_a_run_did_not_record_is_a_409_not_recorded(service, kind):
    job = await create_finished(service, TEACHER_FLOW, doc("teacher"))
    body = assert_problem(await plot(service, job, kind=kind), 409, "not-recorded")
    assert f"record.{kind}" in body["detail"]


async def test_similarity_request_without_a_hidden_layer_is_refused_before_queueing(service):
    request = small_request(network={"hidden": []}, record={"similarity": True})
    response = await service.client.post("/v1/simulations", content=orjson.dumps(request),
                                         headers={"content-type": "application/json"})
    body = assert_problem(response, 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["record", "similarity"]
    assert service.job_count() == 0


@pytest.mark.parametrize("settings_overrides", [{"max_trajectory_values": 2000}])
async def test_similarity_counts_towards_the_trajectory_size_limit(service):
    # Per record 7·4 (product) + 2·4 (modes) + 8 (scalars) = 44 numbers: 40 records are 1760 ≤ 2000; the 4 × 4
    # RSM adds 16 per record, 40 × 60 = 2400 > 2000.
    request = {**HIERARCHY_GD, "record": {"points": 40}}
    ok = await service.client.post("/v1/simulations", content=orjson.dumps(request))
    assert ok.status_code == 202, ok.text
    request = {**HIERARCHY_GD, "record": {"points": 40, "similarity": True}}
    body = assert_problem(await service.client.post("/v1/simulations", content=orjson.dumps(request)), 422,
                          "limit-exceeded")
    assert "record.similarity" in body["errors"][0]["fix"]


# ------------------------------------------------------------------------------------------------
# tasks: a task sequence's forgetting curves


def test_tasks_figure_draws_each_phases_task_loss_as_one_line():
    d = doc("sequence")
    lines = lines_by_gid(plot_figure(d, "tasks", context=context("sequence")), "task-loss-")
    task_loss = np.array(d["task_loss"])
    assert [ln.get_gid() for ln in lines] == ["task-loss-0", "task-loss-1"]
    for p, line in enumerate(lines):
        t, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        idx = np.searchsorted(d["time"], t)
        assert np.array_equal(y, task_loss[idx, p])


def test_tasks_svg_has_one_path_per_phase_and_names_each_phase():
    svg = render_plot(doc("sequence"), "tasks", context=context("sequence"))
    root = ET.fromstring(svg)
    groups = [g for g in root.iter(f"{SVG_NS}g") if (g.get("id") or "").startswith("task-loss-")]
    assert sorted(g.get("id") for g in groups) == ["task-loss-0", "task-loss-1"]
    assert all(len(list(g.iter(f"{SVG_NS}path"))) == 1 for g in groups)
    text = " ".join(texts(svg))
    assert "training on task A" in text and "training on task B" in text


def test_tasks_switch_is_a_dashed_vertical_line_at_the_phase_start():
    d = doc("sequence")
    ax = plot_figure(d, "tasks", context=context("sequence")).axes[0]
    verticals = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--" and len(set(ln.get_xdata())) == 1]
    assert [ln.get_xdata()[0] for ln in verticals] == [d["phase_starts"][1]] == [pytest.approx(2.0)]


def test_tasks_legend_gives_each_tasks_loss_at_its_switch_and_at_the_end():
    d = doc("sequence")
    rows = legend_texts(plot_figure(d, "tasks", context=context("sequence")))
    i = int(np.searchsorted(d["time"], 2.0, side="right")) - 1          # the record at the switch: W as A left it
    a_row = next(r for r in rows if r.startswith("L_A(t): task A, trained on t ∈ [0, 2)"))
    assert f"{d['task_loss'][i][0]:.3g} at its switch, {d['task_loss'][-1][0]:.3g} at the end" in a_row
    assert any(r.startswith("L_B(t): task B, trained on t ≥ 2") for r in rows)


def test_tasks_y_axis_is_log_when_the_losses_span_decades_and_linear_when_asked():
    assert plot_figure(doc("sequence"), "tasks").axes[0].get_yscale() == "log"
    assert plot_figure(doc("sequence"), "tasks", Options(y_scale="linear")).axes[0].get_yscale() == "linear"


def test_a_repeated_task_is_drawn_dashed_over_its_first_phase_and_named_as_the_same():
    d = copy.deepcopy(doc("sequence"))
    d["task_loss"] = [row + [row[0]] for row in d["task_loss"]]        # a third phase: task A again
    d["task_loss_kind"] = d["task_loss_kind"] + ["loss"]
    d["phase_starts"] = d["phase_starts"] + [3.0]
    fig = plot_figure(d, "tasks")
    third = lines_by_gid(fig, "task-loss-2")[0]
    assert third.get_linestyle() == "--"
    assert any("the same task as A" in r for r in legend_texts(fig))


def test_tasks_of_a_single_task_is_a_plot_error_naming_the_sequence_data_kind():
    with pytest.raises(PlotError) as info:
        plot_figure(doc("gd"), "tasks")
    assert info.value.code == "not_recorded" and "data.kind" in info.value.message
    assert '"sequence"' in info.value.fix and "kind=loss" in info.value.fix


# ------------------------------------------------------------------------------------------------
# sharpness: the top Hessian eigenvalues and 2/η


def test_sharpness_draws_every_recorded_eigenvalue():
    d = doc("sharpening")
    lines = lines_by_gid(plot_figure(d, "sharpness", context=context("sharpening")), "eigenvalue-")
    assert [ln.get_gid() for ln in lines] == ["eigenvalue-1", "eigenvalue-2"]
    sharpness = np.array(d["sharpness"])
    for i, line in enumerate(lines):
        assert np.array_equal(np.asarray(line.get_ydata()), sharpness[:, i])
    assert lines[0].get_linewidth() > lines[1].get_linewidth()          # the sharpness λ_1 bold


def test_sharpness_threshold_is_dashed_at_two_over_eta_and_labelled_edge_of_stability():
    d = doc("sharpening")
    fig = plot_figure(d, "sharpness", context=context("sharpening"))
    (line,) = lines_by_gid(fig, "sharpness-threshold")
    assert d["sharpness_threshold"] == pytest.approx(2 / 0.16)
    assert line.get_linestyle() == "--" and set(line.get_ydata()) == {d["sharpness_threshold"]}
    assert "2/η = 12.5 (edge of stability)" in legend_texts(fig)
    assert "η = 0.16" in fig.axes[1].get_title()


def test_sharpness_svg_states_the_threshold_value_and_when_it_is_reached():
    d = doc("sharpening")
    text = " ".join(texts(render_plot(d, "sharpness", context=context("sharpening"))))
    assert "2/η = 12.5 (edge of stability)" in text
    s = np.array(d["sharpness"])[:, 0]
    crossing = d["time"][int(np.argmax(s >= d["sharpness_threshold"]))]
    assert f"S first reaches 2/η at t = {crossing:.4g}" in text


def test_a_flow_runs_sharpness_has_no_threshold_and_the_legend_says_so():
    fig = plot_figure(doc("sharpness_flow"), "sharpness", context=context("sharpness_flow"))
    assert doc("sharpness_flow")["sharpness_threshold"] is None
    assert not lines_by_gid(fig, "sharpness-threshold")
    assert any("no step size, so no 2/η threshold" in r for r in legend_texts(fig))


def test_a_threshold_far_above_the_sharpness_is_named_not_drawn():
    d = copy.deepcopy(doc("sharpening"))
    d["sharpness_threshold"] = 100 * float(np.max(d["sharpness"]))
    fig = plot_figure(d, "sharpness", context=context("sharpening"))
    assert not lines_by_gid(fig, "sharpness-threshold")
    assert any("above the axis, S stays below 1% of it" in r for r in legend_texts(fig))


def test_sharpness_threshold_formula_follows_momentum_and_weight_decay():
    from service.plots.sharpness import threshold_formula

    assert threshold_formula({"learning_rate": 0.1}) == "2/η"
    assert threshold_formula({"momentum": 0.9}) == "2(1 + μ)/η"
    assert threshold_formula({"momentum": 0.9, "nesterov": True}) == "2(1 + μ)/((1 + 2μ)η)"
    assert threshold_formula({"weight_decay": 0.01}) == "2/η − γ"


def test_sharpness_not_recorded_is_a_plot_error_naming_record_sharpness():
    with pytest.raises(PlotError) as info:
        plot_figure(doc("gd"), "sharpness")
    assert info.value.code == "not_recorded" and "record.sharpness" in info.value.fix


# ------------------------------------------------------------------------------------------------
# loss: the linearised network and the random-matrix theory


def test_loss_draws_the_linearised_loss_dashed_with_its_own_legend_row():
    d = doc("linearized")
    fig = plot_figure(d, "loss", context=context("linearized"))
    (line,) = lines_by_gid(fig, "linearized-loss")
    assert line.get_linestyle() == "--"
    t = np.asarray(line.get_xdata())
    assert np.array_equal(np.asarray(line.get_ydata()), np.array(d["linearized_loss"])[np.searchsorted(d["time"], t)])
    assert "L_lin(t): linearised at init (NTK fixed at K(0))" in legend_texts(fig)


def test_a_sequences_loss_plot_marks_the_switch_times():
    d = doc("sequence")
    fig = plot_figure(d, "loss", context=context("sequence"))
    assert [ln.get_xdata()[0] for ln in lines_by_gid(fig, "task-switch")] == d["phase_starts"][1:]
    assert any("kind=tasks draws every task's" in r for r in legend_texts(fig))


def test_loss_without_record_linearized_draws_no_linearised_loss():
    assert not lines_by_gid(plot_figure(doc("gd"), "loss"), "linearized-loss")


def test_loss_draws_the_random_matrix_theory_beside_the_mode_theory():
    fig = plot_figure(doc("noisy"), "loss", context=context("noisy"))
    assert [ln.get_gid() for ln in lines_by_gid(fig, "random-matrix-")] == ["random-matrix-loss",
                                                                          "random-matrix-test-loss"]
    rows = legend_texts(fig)
    for symbol in ("L", "L_test"):
        assert f"theory of {symbol} (random matrix: Lampinen & Ganguli, asymptotic)" in rows
        assert f"theory of {symbol} (modes_generalization, approximate)" in rows


# ------------------------------------------------------------------------------------------------
# the new kinds over HTTP


@pytest.mark.parametrize("kind", ["tasks", "sharpness"])
def test_the_new_kinds_legends_are_outside_the_axes(kind):
    run = {"tasks": "sequence", "sharpness": "sharpening"}[kind]
    fig = plot_figure(doc(run), kind, context=context(run))
    renderer = fig.canvas.get_renderer()
    for legend in legends(fig):
        assert not any(legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
                       for ax in fig.axes)


@pytest.mark.parametrize(("kind", "run"), [("tasks", "sequence"), ("sharpness", "sharpening"),
                                           ("sharpness", "sharpness_flow"), ("loss", "linearized"),
                                           ("loss", "sequence"), ("loss", "noisy")])
@pytest.mark.parametrize("fmt", ["svg", "png"])
async def test_the_new_science_figures_render_over_http(service, kind, run, fmt):
    job = await create_finished(service, RUNS[run], doc(run))
    response = await plot(service, job, fmt, kind=kind)
    assert response.status_code == 200, response.text
    if fmt == "png":
        assert response.headers["content-type"] == "image/png" and _png_size(response.content)[0] > 0
    else:
        assert response.headers["content-type"] == "image/svg+xml"
        assert "time t" in " ".join(texts(response.content))


async def test_tasks_plot_of_a_single_task_is_a_409_saying_to_run_a_sequence(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    body = assert_problem(await plot(service, job, kind="tasks"), 409, "not-recorded")
    assert "data.kind" in body["detail"] and '"sequence"' in body["detail"] and "kind=loss" in body["detail"]


def test_the_kind_enum_of_the_plot_route_is_the_plot_packages_kinds():
    from service.openapi_export import current_schema
    from service.plots import KINDS

    spec = current_schema()
    parameters = spec["paths"]["/v1/simulations/{job_id}/plot.svg"]["get"]["parameters"]
    kind = next(p for p in parameters if p["name"] == "kind")
    assert tuple(kind["schema"]["enum"]) == KINDS


# ------------------------------------------------------------------------------------------------
# what the plot routes read of a stored trajectory


def test_figures_drawn_without_the_members_no_figure_reads_are_the_same_pixels():
    """The routes leave ``NOT_DRAWN`` (the recorded weights above all) in the store: every kind's PNG is the one drawn
    from the whole document, and the weights are never decompressed."""
    from service import codec
    from service.api.plot_params import PLOT_MEMBERS, plot_document
    from service.plots import KINDS, NOT_DRAWN
    from tests.support.trajectories import packed

    request = {**HIERARCHY_GD, "record": {"points": 30, "weights": True, "similarity": True, "kernel": True,
                                          "sharpness": True}}
    blob = packed(run_document(request))
    stored = codec.StoredTrajectory(codec.reader_of(blob), len(blob))
    assert any(n.startswith("weights_") for n in stored.names)
    assert not any(codec.field_of(n).member in NOT_DRAWN for n in codec.selected_names(stored, PLOT_MEMBERS))
    whole, drawn = codec.document(codec.select(stored), codec.MEMBERS), plot_document(stored)
    context = context_of(SimulationRequest.model_validate(request).model_dump(mode="json", by_alias=True))
    for kind in KINDS:
        try:
            want = render_plot(whole, kind, context=context, fmt="png")
        except PlotError as exc:  # tasks: not a task sequence
            with pytest.raises(PlotError, match=re.escape(exc.message)):
                render_plot(drawn, kind, context=context, fmt="png")
            continue
        assert render_plot(drawn, kind, context=context, fmt="png") == want, kind
