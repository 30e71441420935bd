"""GET /v1/plots/compare.svg|png|pdf: several simulations in one figure, and service.plots.compare."""

from __future__ import annotations

import numpy as np
import pytest

from service.plots import Options, PlotError, compare_figure
from service.plots.common import Context
from tests.api.conftest import assert_problem
from tests.support.figures import LAZY, RICH, SHARPENING_GD, context, doc, legend_texts, lines_by_gid, texts
from tests.support.real_runs import TEACHER_FLOW, create_finished

pytestmark = pytest.mark.anyio


async def compare(service, ids, fmt: str = "svg", **params):
    return await service.client.get(f"/v1/plots/compare.{fmt}", params={"simulation": ids, **params})


def test_lazy_and_rich_kernels_share_one_log_axis_one_colour_per_run():
    fig = compare_figure([("lazy", doc("lazy"), Context()), ("rich", doc("rich"), Context())], "kernel")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"                      # the lazy run's d_K ≈ 1e-5 beside the rich run's 0.3
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
    assert len(lines) == 2 and lines[0].get_color() != lines[1].get_color()
    assert np.max(lines[0].get_ydata()) < 1e-3 < np.max(lines[1].get_ydata())
    texts_ = legend_texts(fig)
    assert any(t.startswith("lazy: d_K(end) = ") for t in texts_) and any(t.startswith("rich: d_K(end)") for t in texts_)


def test_modes_comparison_draws_each_runs_modes_and_theory_in_its_colour():
    fig = compare_figure([("lazy", doc("lazy"), Context()), ("rich", doc("rich"), Context())], "modes")
    ax = fig.axes[0]
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata()) > 1]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--" and len(ln.get_xdata()) > 1]
    assert len(solid) == len(dashed) == 6                # 3 modes with s > 0 per run
    assert len({ln.get_color() for ln in solid}) == 2


def test_loss_comparison_draws_each_runs_loss():
    fig = compare_figure([("a", doc("lazy"), Context()), ("b", doc("rich"), Context())], "loss")
    assert [t for t in legend_texts(fig)][:2] == ["a", "b"]


def test_kernel_comparison_of_a_run_without_the_kernel_says_not_recorded():
    with pytest.raises(PlotError) as info:
        compare_figure([("lazy", doc("lazy"), Context()), ("teacher", doc("teacher"), Context())], "kernel")
    assert info.value.code == "not_recorded" and "teacher" in info.value.message


def sharpness_runs():
    return [("gd", doc("sharpening"), context("sharpening")), ("flow", doc("sharpness_flow"), context("sharpness_flow"))]


def test_sharpness_comparison_draws_each_runs_sharpness_and_its_own_threshold_in_its_colour():
    fig = compare_figure(sharpness_runs(), "sharpness", Options(time_scale="linear"))  # linear: t = 0 drawn too
    (gd,) = lines_by_gid(fig, "sharpness-0")
    (flow,) = lines_by_gid(fig, "sharpness-1")
    assert np.array_equal(gd.get_ydata(), np.array(doc("sharpening")["sharpness"])[:, 0])  # λ_1, every record
    assert np.array_equal(flow.get_ydata(), np.array(doc("sharpness_flow")["sharpness"])[:, 0])
    (threshold,) = lines_by_gid(fig, "threshold-0")
    assert list(threshold.get_ydata()) == [doc("sharpening")["sharpness_threshold"]] * 2
    assert doc("sharpening")["sharpness_threshold"] == pytest.approx(2 / 0.16) and threshold.get_linestyle() == "--"
    assert threshold.get_color() == gd.get_color() != flow.get_color()
    assert not lines_by_gid(fig, "threshold-1")                         # a flow run has no step size
    assert gd.get_linewidth() > flow.get_linewidth()                   # a run drawn over another stays visible


def test_sharpness_comparison_legend_says_when_each_run_reaches_its_edge():
    text = " ".join(legend_texts(compare_figure(sharpness_runs(), "sharpness")))
    d = doc("sharpening")
    s = np.array(d["sharpness"])[:, 0]
    crossing = d["time"][int(np.argmax(s >= d["sharpness_threshold"]))]
    assert f"gd (gradient descent, η = 0.16): 2/η = 12.5, reached at t = {crossing:.4g}" in text
    assert "flow (gradient flow): no step size, no edge of stability" in text


def test_sharpness_comparison_of_a_run_without_it_says_not_recorded():
    with pytest.raises(PlotError) as info:
        compare_figure([*sharpness_runs(), ("lazy", doc("lazy"), Context())], "sharpness")
    assert info.value.code == "not_recorded" and "lazy did not record the sharpness" in info.value.message


async def test_compare_route_draws_the_sharpness(service):
    gd = await create_finished(service, {**SHARPENING_GD, "name": "gd"}, doc("sharpening"))
    response = await compare(service, [gd], "png", kind="sharpness")
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")


async def test_compare_route_labels_runs_by_id_without_names(service):
    lazy = await create_finished(service, LAZY, doc("lazy"))
    rich = await create_finished(service, RICH, doc("rich"))
    response = await compare(service, [lazy, rich], kind="kernel")
    assert response.status_code == 200 and response.headers["content-type"] == "image/svg+xml"
    text = " ".join(texts(response.content))
    assert f"{lazy}: d_K(end)" in text and f"{rich}: d_K(end)" in text


async def test_compare_route_labels_runs_by_their_name_and_tags(service):
    lazy = await create_finished(service, {**LAZY, "name": "lazy", "tags": ["lambda=-25", "exact"]}, doc("lazy"))
    rich = await create_finished(service, {**RICH, "name": "rich"}, doc("rich"))
    text = " ".join(texts((await compare(service, [lazy, rich], kind="kernel")).content))
    assert "lazy [lambda=-25, exact]: d_K(end)" in text and "rich: d_K(end)" in text and lazy not in text


@pytest.mark.parametrize(("fmt", "media", "magic"), [("png", "image/png", b"\x89PNG"),
                                                      ("pdf", "application/pdf", b"%PDF-")])
async def test_compare_route_answers_png_and_pdf(service, fmt, media, magic):
    lazy = await create_finished(service, LAZY, doc("lazy"))
    response = await compare(service, [lazy], fmt, kind="modes")
    assert response.headers["content-type"] == media and response.content.startswith(magic)


async def test_compare_of_an_unknown_simulation_is_a_404(service):
    lazy = await create_finished(service, LAZY, doc("lazy"))
    assert_problem(await compare(service, [lazy, "nope"]), 404, "not-found")


async def test_compare_kernel_with_a_run_that_did_not_record_it_is_a_409(service):
    lazy = await create_finished(service, LAZY, doc("lazy"))
    teacher = await create_finished(service, TEACHER_FLOW, doc("teacher"))
    assert_problem(await compare(service, [lazy, teacher], kind="kernel"), 409, "not-recorded")


async def test_compare_needs_at_least_one_and_at_most_eight_simulations(service):
    assert_problem(await service.client.get("/v1/plots/compare.svg"), 422)
    body = assert_problem(await compare(service, [f"id{i}" for i in range(9)]), 422)
    assert body["errors"][0]["field"] == ["simulation"]
