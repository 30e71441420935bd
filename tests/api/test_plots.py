"""GET /v1/simulations/{id}/plot.svg and service.plots: real trajectories drawn, the SVG read back as XML."""

from __future__ import annotations

import copy
import functools
import xml.etree.ElementTree as ET

import orjson
import pytest

from service.plots import PlotError, nearest_records, render_plot
from tests.api.conftest import assert_problem, small_request
from tests.api.real_runs import (
    CORRELATIONS_EXACT,
    HIERARCHY_GD,
    TEACHER_FLOW,
    create_finished,
    run_document,
)

pytestmark = pytest.mark.anyio

SVG_NS = "{http://www.w3.org/2000/svg}"


@functools.cache
def _doc(name: str) -> bytes:
    return orjson.dumps(run_document({"gd": HIERARCHY_GD, "exact": CORRELATIONS_EXACT, "teacher": TEACHER_FLOW}[name]))


def doc(name: str) -> dict:
    return orjson.loads(_doc(name))


def texts(svg: bytes) -> list[str]:
    """Every text element's content (the SVG keeps text as text: svg.fonttype none)."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    return ["".join(t.itertext()) for t in root.iter(f"{SVG_NS}text")]


def strokes(svg: bytes) -> list[dict[str, str]]:
    """The style of every stroked path, as a dict (stroke, stroke-dasharray, stroke-opacity, ...)."""
    out = []
    for path in ET.fromstring(svg).iter(f"{SVG_NS}path"):
        style = dict(item.split(":", 1) for item in path.get("style", "").split(";") if ":" in item)
        style = {k.strip(): v.strip() for k, v in style.items()}
        if "stroke" in style:
            out.append(style)
    return out


async def plot(service, job_id: str, **params):
    return await service.client.get(f"/v1/simulations/{job_id}/plot.svg", params=params)


# ------------------------------------------------------------------------------------------------
# modes


async def test_modes_plot_is_svg_with_labelled_axes_and_the_theory_model_named(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    response = await plot(service, job, kind="modes")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    text = " ".join(texts(response.content))
    assert "mode strength u_α(t) = u_αᵀ W(t) v_α" in text
    assert "time t = η·step (learning rate × steps)" in text
    assert "theory: saxe_small_init (approximate)" in text      # small random init: approximate
    # depth-2 tree: √7/4 … 1/4 (docs/theory.md#hierarchy-tree)
    assert "mode 1: s = 0.6614" in text and "mode 4: s = 0.25" in text


async def test_modes_theory_is_dashed_in_the_colour_of_its_mode(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    svg = (await plot(service, job)).content  # modes is the default kind
    k = len(doc("gd")["modes"]["singular_values"])
    dashed = [s for s in strokes(svg) if "stroke-dasharray" in s and s.get("stroke-opacity") != "0.55"]
    solid = [s for s in strokes(svg) if s.get("stroke-opacity") == "0.55" and "stroke-dasharray" not in s]
    # dashed: one theory curve per mode + the legend's grey style sample; solid (translucent): one simulated
    # curve per mode + its legend entry + the grey style sample
    assert len(dashed) == k + 1
    assert len(solid) == 2 * k + 1
    assert {s["stroke"] for s in dashed} == {s["stroke"] for s in solid}


def test_exact_theory_is_marked_exact_not_approximate():
    text = " ".join(texts(render_plot(doc("exact"), "modes")))
    assert "(exact)" in text and "(approximate)" not in text
    assert doc("exact")["modes"]["theory_model"] in text
    assert "time t (gradient-flow time; t = η·step for GD)" in text


def test_modes_without_a_theory_say_so_and_draw_nothing_dashed():
    svg = render_plot(doc("teacher"), "modes")
    assert doc("teacher")["modes"]["theory"] is None
    assert "no analytic prediction applies to this setting" in " ".join(texts(svg))
    assert not [s for s in strokes(svg) if "stroke-dasharray" in s]


async def test_log_time_axis_is_labelled_and_drops_t_zero(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    text = " ".join(texts((await plot(service, job, kind="modes", log_time="true")).content))
    assert "[log scale; t = 0 not shown]" in text


# ------------------------------------------------------------------------------------------------
# loss


async def test_loss_plot_has_a_log_loss_axis_and_the_optimum(service):
    job = await create_finished(service, TEACHER_FLOW, doc("teacher"))
    text = " ".join(texts((await plot(service, job, kind="loss")).content))
    assert "loss L = (1/N) Σ ‖y − W x‖²  [log scale]" in text
    loss_star = doc("teacher")["optimum"]["loss"]
    assert f"optimum L* = {loss_star:.4g} (rank 3)" in text


def test_loss_without_sigma33_is_the_excess_loss_and_the_axis_says_so():
    assert doc("exact")["loss"] is None
    text = " ".join(texts(render_plot(doc("exact"), "loss")))
    assert "excess loss L − L*  [log scale]" in text
    assert "(L itself is unknown: Σ33 was not given)" in text


HELD_OUT_GD = {
    "data": {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], [0.0, 0.5]],
             "sigma33": [[4.5, 0.0], [0.0, 0.5]],
             "test": {"kind": "correlations", "sigma11": [[1.0, 0.0], [0.0, 1.0]], "sigma31": [[2.0, 0.0], [0.0, 0.0]],
                      "sigma33": [[4.5, 0.0], [0.0, 0.3]]}},
    "network": {"hidden": [2]}, "init": {"scheme": "aligned", "strength": 0.001},
    "training": {"method": "gd", "learning_rate": 0.05, "steps": 400}, "record": {"points": 60},
}


def test_loss_plot_draws_the_test_loss_its_minimum_and_the_loss_theory():
    d = run_document(HELD_OUT_GD)
    svg = render_plot(d, "loss")
    text = " ".join(texts(svg))
    stop = d["early_stopping"]
    assert "test loss L_test(t)" in text
    assert f"least test loss {stop['test_loss']:.4g}" in text
    assert "theory L_test, modes_generalization" in text and "theory L, modes_generalization" in text
    assert "(approximate)" not in text  # aligned, whitened: the loss theory is exact
    dashed = [s for s in strokes(svg) if "stroke-dasharray" in s]
    assert len(dashed) >= 2  # the two theory curves


def test_non_positive_loss_values_are_counted_not_drawn():
    d = copy.deepcopy(doc("exact"))
    d["excess_loss"][-3:] = [0.0, -1e-17, 0.0]
    text = " ".join(texts(render_plot(d, "loss")))
    assert "3 values ≤ 0 not shown (log scale)" in text


# ------------------------------------------------------------------------------------------------
# product and similarity


async def test_product_plot_shows_w_at_the_nearest_record_next_to_the_optimum(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    response = await plot(service, job, kind="product", time=[7.0])
    assert response.status_code == 200
    text = texts(response.content)
    times = doc("gd")["time"]
    nearest = min(times, key=lambda t: abs(t - 7.0))
    assert f"W(t = {nearest:.4g})" in text
    assert "optimum W* (rank 4)" in text
    assert {"00", "01", "10", "11", "root"} <= set(text)          # the preset's item and feature names
    assert "input (item)" in text and "output (feature)" in text
    assert "entry of W" in text                                    # the colour bar


async def test_similarity_plot_shows_each_chosen_time(service):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    response = await plot(service, job, kind="similarity", time=[0, 20, 80])
    assert response.status_code == 200
    text = " ".join(texts(response.content))
    assert "RSM = W21ᵀW21" in text and "similarity h_i · h_j" in text
    times = doc("gd")["time"]
    for t in (0, 20, 80):
        assert f"t = {min(times, key=lambda r: abs(r - t)):.4g}" in text


async def test_similarity_plot_of_a_run_without_it_is_a_409_not_recorded(service):
    job = await create_finished(service, TEACHER_FLOW, doc("teacher"))
    body = assert_problem(await plot(service, job, kind="similarity"), 409, "not-recorded")
    assert "record.similarity" in body["detail"]


def test_nearest_records_picks_the_closest_record_once():
    assert nearest_records([0.0, 1.0, 2.0, 4.0], [0.4, 2.9, 3.1, 100.0, 3.9]) == [0, 2, 3]


def test_render_plot_refuses_an_unknown_kind():
    with pytest.raises(PlotError) as info:
        render_plot(doc("exact"), "histogram")
    assert info.value.field == "kind"


# ------------------------------------------------------------------------------------------------
# errors


async def test_plot_of_an_unknown_simulation_is_a_404(service):
    assert_problem(await plot(service, "nope"), 404, "not-found")


async def test_plot_before_success_is_a_409(service):
    response = await service.client.post("/v1/simulations", content=orjson.dumps(small_request()),
                                         headers={"content-type": "application/json"})
    body = assert_problem(await plot(service, response.json()["id"]), 409, "not-finished")
    assert "queued" in body["detail"]


@pytest.mark.parametrize(("params", "field"), [
    ({"kind": "histogram"}, "kind"),
    ({"log_time": "maybe"}, "log_time"),
    ({"kind": "product", "time": "-1"}, "time"),
    ({"kind": "product", "time": "inf"}, "time"),
    ({"kind": "product", "time": [str(t) for t in range(9)]}, "time"),
])
async def test_bad_query_parameters_are_422_naming_the_parameter(service, params, field):
    job = await create_finished(service, HIERARCHY_GD, doc("gd"))
    body = assert_problem(await plot(service, job, **params), 422)
    assert body["errors"][0]["field"][0] == field and body["errors"][0]["in"] == "query"


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
# kernel

KERNEL_FLOW = {
    "data": {"kind": "preset", "name": "whitened", "singular_values": [3.0, 1.0], "n_in": 3, "n_out": 3},
    "network": {"hidden": [4, 3]}, "init": {"scheme": "gaussian", "scale": 0.2, "seed": 0},
    "training": {"method": "flow", "t_max": 4.0}, "record": {"points": 40, "kernel": True},
}


async def test_kernel_plot_draws_the_kernel_distance_and_each_hidden_layers_grams(service):
    d = run_document(KERNEL_FLOW)
    job = await create_finished(service, KERNEL_FLOW, d)
    response = await plot(service, job, kind="kernel")
    assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg+xml")
    text = " ".join(texts(response.content))
    assert "NTK: 1 − cos(K(0), K(t))" in text
    assert "input side P_1" in text and "input side P_2" in text and "output side Q_2" in text  # D = 3: two hidden


async def test_kernel_plot_of_a_run_without_it_is_a_409_not_recorded(service):
    job = await create_finished(service, TEACHER_FLOW, doc("teacher"))
    problem = assert_problem(await plot(service, job, kind="kernel"), 409, "not-recorded")
    assert "record.kernel" in problem["detail"]
