"""data kind sequence over HTTP: a task sequence runs as the core's ``simulate_sequence`` on the same tasks (built here
in the core directly, not through the service's build), its trajectory carries task_loss, task_excess_loss,
task_loss_kind, phase and phase_starts; every refusal is problem+json naming the phase's field as the caller wrote it."""

from __future__ import annotations

import numpy as np
import pytest

from service.dynamics import init as core_init
from service.dynamics import presets
from service.dynamics.methods import Exact, GradientDescent, GradientFlow
from service.dynamics.problem import problem_from_correlations
from service.dynamics.record import RecordSchedule
from service.dynamics.sequence import Phase, TaskSequence, simulate_sequence
from tests.api.conftest import assert_problem
from tests.support.real_runs import submit, submit_and_run

pytestmark = pytest.mark.anyio

TASK_A = {"kind": "preset", "name": "whitened", "singular_values": [3.0, 2.0, 1.0], "n_in": 4, "n_out": 4, "seed": 1}
TASK_B = {**TASK_A, "seed": 2}
# Task C has no Σ33: its task loss is reported as its excess loss
TASK_C = {"kind": "correlations", "sigma11": np.eye(4).tolist(), "sigma31": (0.5 * np.ones((4, 4))).tolist()}


def sequence(*phases) -> dict:
    return {"kind": "sequence", "phases": [{"data": d, **({} if u is None else {"until": u})} for d, u in phases]}


def request(data, training=None, **changes) -> dict:
    out = {"data": data, "network": {"hidden": [4]},
           "init": {"scheme": "lambda_balanced", "lambda": 0.0, "scale": 0.05, "seed": 0},
           "training": training or {"method": "gd", "learning_rate": 0.01, "steps": 1000},
           "record": {"points": 41}}
    out.update(changes)
    return out


def core_tasks():
    a = presets.whitened([3.0, 2.0, 1.0], n_in=4, n_out=4, seed=1)
    b = presets.whitened([3.0, 2.0, 1.0], n_in=4, n_out=4, seed=2)
    c = problem_from_correlations(np.eye(4), 0.5 * np.ones((4, 4)))
    return a, b, c


@pytest.mark.parametrize("method, training", [
    (GradientDescent(0.01, 1000), {"method": "gd", "learning_rate": 0.01, "steps": 1000}),
    (GradientFlow(10.0), {"method": "flow", "t_max": 10.0}),
], ids=["gd", "flow"])
async def test_a_sequence_run_equals_the_cores_simulate_sequence_on_the_same_tasks(service, method, training):
    a, b, c = core_tasks()
    _, doc = await submit_and_run(service, request(sequence((TASK_A, 2.5), (TASK_B, 6.0), (TASK_C, None)), training))
    w0 = core_init.initial_weights(a, [4], "lambda_balanced", lam=0.0, scale=0.05, seed=0)
    want = simulate_sequence(TaskSequence([Phase(a, 2.5), Phase(b, 6.0), Phase(c)]), w0, method,
                             RecordSchedule(points=41))
    # the same core code on the same inputs: equal bit for bit (the records pass through JSON, which round-trips)
    np.testing.assert_array_equal(np.array(doc["product"]), want.product)
    np.testing.assert_array_equal(np.array(doc["task_loss"]), want.task_loss)
    np.testing.assert_array_equal(np.array(doc["task_excess_loss"]), want.task_excess_loss)
    assert doc["phase"] == want.phase.tolist() and doc["phase_starts"] == want.phase_starts.tolist()
    assert doc["task_loss_kind"] == ["loss", "loss", "excess_loss"]
    assert doc["phase_starts"] == [0.0, 2.5, 6.0] and doc["loss"] is None  # task C has no Σ33
    np.testing.assert_array_equal(np.array(doc["excess_loss"]), want.excess_loss)


async def test_exact_continues_through_a_switch_and_records_the_forgetting_of_the_first_task(service):
    # λ-balanced, whitened: the Riccati solution continues exactly from the state at the switch (Braun et al. 2022).
    # Task B is task A with its targets rotated by π/4 in two output directions (examples/forgetting.py): A, learned
    # by t = 5, is forgotten while B is learned, and at the end L_A = ‖Σ31ᴮ − Σ31ᴬ‖² (L_ls = 0 for both)
    a = core_tasks()[0]
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(np.pi / 4), -np.sin(np.pi / 4)], [np.sin(np.pi / 4), np.cos(np.pi / 4)]]
    s31 = rot @ a.sigma31
    b = problem_from_correlations(a.sigma11, s31, s31 @ s31.T, residual_loss=0.0)
    task_b = {"kind": "correlations", "sigma11": a.sigma11.tolist(), "sigma31": s31.tolist(),
              "sigma33": (s31 @ s31.T).tolist()}
    _, doc = await submit_and_run(service, request(sequence((TASK_A, 5.0), (task_b, None)),
                                                   {"method": "exact", "t_max": 10.0}))
    task_loss = np.array(doc["task_loss"])
    switch = doc["phase"].index(1)
    assert doc["time"][switch] == 5.0 and doc["phase_starts"] == [0.0, 5.0]
    assert task_loss[switch, 0] < 1e-6 and task_loss[-1, 1] < 1e-6
    forgotten = float(np.sum((b.sigma31 - a.sigma31) ** 2))
    # B is learned to 1e-6 by t = 10 (examples/forgetting.py measures the same to < 1e-6 relative)
    assert abs(task_loss[-1, 0] - forgotten) < 1e-6 * forgotten
    w0 = core_init.initial_weights(a, [4], "lambda_balanced", lam=0.0, scale=0.05, seed=0)
    want = simulate_sequence(TaskSequence([Phase(a, 5.0), Phase(b)]), w0, Exact(10.0), RecordSchedule(points=41))
    np.testing.assert_array_equal(task_loss, want.task_loss)


@pytest.mark.parametrize("phases, field", [
    (((TASK_A, 2.0), (TASK_B, 1.0), (TASK_A, None)), ["data", "phases", 1, "until"]),
    (((TASK_A, 2.0), (TASK_B, 3.0)), ["data", "phases", 1, "until"]),
    (((TASK_A, None), (TASK_B, None)), ["data", "phases", 0, "until"]),
    (((TASK_A, 2.0), (TASK_B, 10.0), (TASK_A, None)), ["data", "phases", 1, "until"]),
    (((TASK_A, 2.0), ({**TASK_B, "n_out": 3}, None)), ["data", "phases", 1, "data"]),
    (((TASK_A, 2.0), ({"kind": "correlations", "sigma11": [[1.0, 2.0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0],
                                                           [0, 0, 0, 1.0]], "sigma31": np.ones((4, 4)).tolist()},
                       None)), ["data", "phases", 1, "data", "sigma11"]),
], ids=["until-decreasing", "last-with-until", "first-without-until", "until-past-the-end", "other-widths",
        "phase-sigma11-not-symmetric"])
async def test_invalid_phases_are_refused_naming_the_phase(service, phases, field):
    body = assert_problem(await submit(service, request(sequence(*phases))), 422)
    assert body["errors"][0]["field"] == field, body
    assert body["errors"][0]["fix"]


@pytest.mark.parametrize("data, field", [
    ({"kind": "sequence", "phases": []}, ["data", "phases"]),
    (sequence(({**TASK_A, "n_in": "4"}, None)), ["data", "phases", 0, "data", "n_in"]),
    (sequence((sequence((TASK_A, None)), None)), ["data", "phases", 0, "data", "kind"]),
    (sequence((TASK_A, None)) | {"test": {"kind": "correlations"}}, ["data", "test"]),
], ids=["no-phases", "preset-parameter", "nested-sequence", "test-on-the-sequence"])
async def test_invalid_sequence_documents_are_validation_errors_naming_the_field(service, data, field):
    body = assert_problem(await submit(service, request(data)), 422, "validation-error")
    assert body["errors"][0]["field"] == field, body


@pytest.mark.parametrize("training, record, field", [
    ({"method": "gd", "learning_rate": 0.01, "steps": 1000, "momentum": 0.9}, {}, ["training", "momentum"]),
    ({"method": "sgd", "learning_rate": 0.01, "batch_size": 2, "steps": 100}, {}, ["training", "method"]),
    ({"method": "gd", "learning_rate": 0.01, "steps": 1000}, {"linearized": True}, ["record", "linearized"]),
], ids=["momentum", "sgd", "linearized"])
async def test_what_a_sequence_cannot_carry_across_a_switch_is_refused_naming_the_field(service, training, record,
                                                                                          field):
    # sgd needs samples: phases of data (hierarchy presets keep theirs)
    data = sequence(({"kind": "preset", "name": "hierarchy", "depth": 2}, 2.0),
                    ({"kind": "preset", "name": "hierarchy", "depth": 2}, None))
    body = assert_problem(await submit(service, request(data, training, record={"points": 11, **record})), 422,
                          "invalid-simulation")
    assert body["errors"][0]["field"] == field, body


async def test_exact_refuses_a_later_phase_without_whitened_inputs_naming_its_sigma11(service):
    later = {"kind": "correlations", "sigma11": np.diag([1.0, 2.0, 1.0, 1.0]).tolist(), "sigma31": np.eye(4).tolist()}
    body = assert_problem(await submit(service, request(sequence((TASK_A, 2.0), (later, None)),
                                                        {"method": "exact", "t_max": 5.0})), 422, "invalid-simulation")
    assert body["errors"][0]["field"] == ["data", "phases", 1, "data", "sigma11"]
    assert "flow" in body["errors"][0]["fix"]


@pytest.mark.parametrize("settings_overrides", [{"max_dataset_values": 100}])
async def test_the_phases_datasets_count_together_against_the_dataset_limit(service):
    # each phase's dataset has 10 × (2 + 2) = 40 numbers: two fit in 100, the third crosses it
    rng = np.random.default_rng(0)
    task = {"kind": "dataset", "x": rng.standard_normal((10, 2)).tolist(), "y": rng.standard_normal((10, 2)).tolist()}
    ok = request(sequence((task, 1.0), (task, None)), network={"hidden": [2]}, init={"scheme": "gaussian"})
    assert (await submit(service, ok)).status_code == 202
    too_much = request(sequence((task, 1.0), (task, 2.0), (task, None)), network={"hidden": [2]},
                       init={"scheme": "gaussian"})
    body = assert_problem(await submit(service, too_much), 422, "limit-exceeded")
    assert body["errors"][0]["field"] == ["data", "phases", 2, "data"]


async def test_the_gradients_endpoint_takes_one_task_not_a_sequence(service):
    body = {"data": sequence((TASK_A, None)), "weights": [np.zeros((4, 4)).tolist()]}
    response = await service.client.post("/v1/gradients", json=body)
    assert assert_problem(response, 422, "validation-error")["errors"][0]["field"] == ["data", "kind"]


@pytest.mark.parametrize("kind", ["loss", "modes", "product"])
async def test_the_plots_of_a_sequence_and_of_an_sgd_run_render(service, kind):
    # the per-phase loss (null without every task's Σ33), the first-phase-only theory (NaN after the switch) and a
    # method the plots did not know before are drawn, not a 500
    hierarchy = {"kind": "preset", "name": "hierarchy", "depth": 2}
    runs = [request(sequence((TASK_A, 2.5), (TASK_C, None))),
            {"data": hierarchy, "network": {"hidden": [4]},
             "training": {"method": "sgd", "learning_rate": 0.05, "batch_size": 2, "epochs": 30},
             "record": {"points": 11, "sharpness": True}}]
    for body in runs:
        job_id, _ = await submit_and_run(service, body)
        response = await service.client.get(f"/v1/simulations/{job_id}/plot.svg", params={"kind": kind})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("image/svg+xml")
