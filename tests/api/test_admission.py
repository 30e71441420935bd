"""Admission control (issue 19.2, 19.4): a cost model checked from the request alone before anything large is built,
heavy validation bounded in concurrency, a key's compute budget and storage quota.

The issue's attacks, each refused before it costs: one valid request of 8 layers of 2000×2000 (4.8 s and +372 MB in
the API before its 202), the same with an unstable learning rate (13 s and +1.2 GB each for a 422), a preset of
4000×4000 with 1000 samples (37 s), a sweep of points at n = 1000 (0.5 s per point), a job that would run for years.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import orjson
import pytest

from service.jobs import submission
from service.limits import Limits, request_cost
from service.schemas import SimulationRequest
from tests.api.conftest import assert_problem, small_request

pytestmark = pytest.mark.anyio

# Refusals are answered from the request alone: far below this, where building would take seconds.
CHEAP_SECONDS = 0.5


def big_request(**training: Any) -> dict:
    return {"data": {"kind": "preset", "name": "random_teacher", "n_in": 2000, "n_out": 2000, "n_samples": 1000},
            "network": {"hidden": [2000] * 7}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
            "training": {"method": "gd", "learning_rate": 1e-4, "steps": 1000, **training}, "record": {"points": 2}}


async def timed(coro) -> tuple[Any, float]:
    started = time.process_time()
    result = await coro
    return result, time.process_time() - started


async def least_cpu(request, tries: int = 3) -> tuple[Any, float]:
    """(the last response, the least process CPU of ``tries`` identical refused requests): a refusal changes nothing,
    and the least of a few is the request's own cost, not a burst of another thread of the test process."""
    timings = [await timed(request()) for _ in range(tries)]
    return timings[-1][0], min(cpu for _, cpu in timings)


async def test_a_request_of_eight_layers_of_2000x2000_is_refused_from_the_request_alone(service):
    response, cpu = await timed(service.client.post("/v1/simulations", json=big_request()))
    problem = assert_problem(response, 422, "limit-exceeded")
    assert "DLNSIM_MAX_VALIDATION_FLOPS" in problem["detail"] and problem["errors"][0]["field"] == ["data", "n_in"]
    assert cpu < CHEAP_SECONDS, cpu
    assert service.job_count() == 0


async def test_four_concurrent_unstable_requests_at_that_size_cost_nothing(service):
    started = time.process_time()
    answers = await asyncio.gather(*(service.client.post("/v1/simulations", json=big_request(learning_rate=10.0))
                                     for _ in range(4)))
    cpu = time.process_time() - started
    for response in answers:
        assert_problem(response, 422, "limit-exceeded")
    assert cpu < CHEAP_SECONDS, cpu


async def test_a_preset_of_4000x4000_with_1000_samples_is_refused_before_it_is_built(service):
    response, cpu = await timed(service.client.get(
        "/v1/presets/random_teacher", params={"n_in": 4000, "n_out": 4000, "n_samples": 1000}))
    problem = assert_problem(response, 422, "limit-exceeded")
    assert problem["errors"][0]["in"] == "query" and "DLNSIM_MAX_VALIDATION_FLOPS" in problem["detail"]
    assert cpu < CHEAP_SECONDS, cpu


async def test_a_job_that_would_run_for_years_is_refused_naming_its_steps(service):
    request = {"data": {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 256},
               "network": {"hidden": [4000, 4000]}, "init": {"scheme": "gaussian", "scale": 0.001, "seed": 0},
               "training": {"method": "gd", "learning_rate": 1e-6, "steps": 10_000_000}, "record": {"points": 2}}
    problem = assert_problem(await service.client.post("/v1/simulations", json=request), 422, "limit-exceeded")
    assert problem["errors"][0]["field"] == ["training", "steps"] and "DLNSIM_MAX_JOB_FLOPS" in problem["detail"]


def sweep(n: int, points: int, axis: str = "init.seed") -> dict:
    base = {"data": {"kind": "preset", "name": "random_teacher", "n_in": n, "n_out": n, "n_samples": n},
            "network": {"hidden": [n]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
            "training": {"method": "gd", "learning_rate": 1e-4, "steps": 10}, "record": {"points": 2}}
    values = list(range(points)) if axis == "init.seed" else [n + k for k in range(points)]
    return {"base": base, "grid": {axis: values}}


async def test_sweep_points_that_share_their_data_build_it_once(service):
    one, cpu_one = await timed(service.client.post("/v1/simulations", json=sweep(400, 1)["base"]))
    assert one.status_code == 202, one.text
    many, cpu_many = await timed(service.client.post("/v1/sweeps", json=sweep(400, 20)))
    assert many.status_code == 202, many.text
    assert cpu_many < 3 * cpu_one + 0.5, (cpu_one, cpu_many)  # not 20 builds of the problem


async def test_a_sweep_whose_points_each_build_a_large_problem_is_refused_up_front(service):
    # n_samples varies: every point has its own data, each costing ~0.5 s at n = 1000
    response, cpu = await timed(service.client.post("/v1/sweeps", json=sweep(1000, 200, axis="data.n_samples")))
    problem = assert_problem(response, 422, "limit-exceeded")
    assert problem["errors"][0]["field"] in (["grid"], ["points"])
    assert cpu < 2.0, cpu


@pytest.mark.parametrize("settings_overrides", [{"validation_concurrency": 1}])
async def test_heavy_validations_run_one_at_a_time_and_light_ones_never_wait(service, monkeypatch):
    running, peak, lock = [0], [0], threading.Lock()
    original = submission.admit_simulation

    def counting(*args: Any, **kwargs: Any):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.2)
            return original(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(submission, "admit_simulation", counting)
    heavy = sweep(400, 1)["base"]  # a validation over 1e8 FLOP-equivalents
    assert request_cost(SimulationRequest.model_validate(heavy), Limits()).validation_flops > 1e8
    answers = await asyncio.gather(*(service.client.post("/v1/simulations", json=heavy | {"init": {
        "scheme": "gaussian", "scale": 0.01, "seed": k}}) for k in range(4)))
    assert [r.status_code for r in answers] == [202] * 4
    assert peak[0] == 1


@pytest.mark.parametrize("settings_overrides", [{"validation_concurrency": 1, "validation_wait_seconds": 0.1}])
async def test_a_request_that_waits_too_long_for_a_validation_slot_gets_503_with_retry_after(service):
    admission = service.app.state.admission
    async with admission.validating(0) as ticket:
        await ticket.hold()  # every slot taken
        response = await service.client.post("/v1/simulations", json=sweep(400, 1)["base"])
    assert_problem(response, 503, "unavailable")
    assert response.headers["retry-after"] == "2"
    light = await service.client.post("/v1/simulations", json=small_request())  # unaffected once free
    assert light.status_code == 202


@pytest.mark.parametrize("settings_overrides", [{"max_key_flops": 3e9}])
async def test_a_keys_queued_and_running_work_is_bounded_by_its_compute_budget(service):
    request = small_request(training={"method": "gd", "learning_rate": 0.05, "steps": 10_000_000})
    cost = request_cost(SimulationRequest.model_validate(request), Limits())
    assert 3e9 / 2 < cost.run_flops < 3e9
    assert (await service.client.post("/v1/simulations", json=request)).status_code == 202
    refused = await service.client.post("/v1/simulations", json=request)
    problem = assert_problem(refused, 429, "compute-budget-exceeded")
    assert "DLNSIM_MAX_KEY_FLOPS" in problem["detail"] and int(refused.headers["retry-after"]) >= 1
    row = service.store.list()[0][0]
    assert service.store.active_cost() == (pytest.approx(cost.run_flops), cost.result_bytes)
    assert service.store.mark_cancelled(row.id)  # finished work no longer counts
    assert (await service.client.post("/v1/simulations", json=request)).status_code == 202


SIX_HUNDRED_BYTES = {  # the issue's ~600-byte request: 64-128-64, 500 records of every layer (88 MB compressed)
    "data": {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 128},
    "network": {"hidden": [128]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 1},
    "training": {"method": "gd", "learning_rate": 0.001, "steps": 20_000}, "record": {"points": 500, "weights": True}}


@pytest.mark.parametrize("settings_overrides", [{"storage_quota_bytes": 200 << 20}])
async def test_a_small_request_is_admitted_with_its_results_size_against_the_keys_storage_quota(service):
    body = orjson.dumps(SIX_HUNDRED_BYTES)
    assert len(body) < 700
    expected = request_cost(SimulationRequest.model_validate(SIX_HUNDRED_BYTES), Limits()).result_bytes
    assert expected > 75 << 20
    first = await service.client.post("/v1/simulations", content=body, headers={"content-type": "application/json"})
    assert first.status_code == 202
    assert service.store.active_cost()[1] == expected  # reserved while it runs
    second = await service.client.post("/v1/simulations", content=body, headers={"content-type": "application/json"})
    assert second.status_code == 202
    third = await service.client.post("/v1/simulations", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(third, 429, "storage-quota-exceeded")
    assert "DLNSIM_STORAGE_QUOTA_BYTES" in problem["detail"] and "DELETE" in problem["detail"]
    # stored results count too, and deleting them frees the quota
    ids = [first.json()["id"], second.json()["id"]]
    for job_id in ids:
        service.finish(job_id, _blob(90 << 20))
    assert_problem(await service.client.post("/v1/simulations", content=body,
                                             headers={"content-type": "application/json"}), 429,
                   "storage-quota-exceeded")
    for job_id in ids:
        assert (await service.client.delete(f"/v1/simulations/{job_id}")).status_code == 204
    again = await service.client.post("/v1/simulations", content=body, headers={"content-type": "application/json"})
    assert again.status_code == 202


def _blob(size: int) -> bytes:
    """A stored result of about ``size`` bytes (random numbers do not compress)."""
    import numpy as np

    from service import codec

    return codec.pack({"time": np.random.default_rng(0).random(size // 8)})


@pytest.mark.parametrize("settings_overrides", [{"max_validation_bytes": 1 << 20}])
async def test_a_body_whose_parse_would_hold_too_much_is_refused_before_it_is_parsed(service):
    # a parse holds ~7 bytes of objects per byte of JSON: 200 kB here would hold more than the 1 MiB allowed
    rows = [[0.5] * 8 for _ in range(5000)]
    request = {"data": {"kind": "dataset", "x": rows, "y": [[0.25] for _ in rows]}, "network": {"hidden": [2]},
               "training": {"method": "gd", "learning_rate": 0.01, "steps": 10}}
    body = orjson.dumps(request)
    assert 150_000 < len(body) < 1 << 20
    response, cpu = await least_cpu(lambda: service.client.post("/v1/simulations", content=body,
                                                                headers={"content-type": "application/json"}))
    problem = assert_problem(response, 413, "body-too-large")
    assert "DLNSIM_MAX_VALIDATION_BYTES" in problem["detail"] and cpu < 0.1, cpu


# ------------------------------------------------------------------------------------------------
# the costs of issue 20's request kinds: none of them bypasses admission

def cost_of(request: dict, **limits: Any):
    return request_cost(SimulationRequest.model_validate(request), Limits(**limits))


def teacher_sgd(**training: Any) -> dict:
    return {"data": {"kind": "preset", "name": "random_teacher", "n_in": 8, "n_out": 8, "n_samples": 64},
            "network": {"hidden": [8]}, "record": {"points": 10},
            "training": {"method": "sgd", "learning_rate": 0.01, "batch_size": 8, **training}}


def test_an_sgd_run_of_epochs_costs_epochs_times_its_batches_per_epoch():
    # N = 64 samples in batches of 8: an epoch is 8 steps
    assert cost_of(teacher_sgd(epochs=10)).run_flops == cost_of(teacher_sgd(steps=80)).run_flops
    assert cost_of(teacher_sgd(epochs=10)).run_flops < cost_of(teacher_sgd(steps=81)).run_flops


def test_sgd_on_a_one_hot_preset_counts_its_items_as_its_samples():
    hierarchy = {"kind": "preset", "name": "hierarchy", "depth": 3}  # 8 items
    by_epochs = cost_of(teacher_sgd(epochs=10, batch_size=2) | {"data": hierarchy})
    assert by_epochs.run_flops == cost_of(teacher_sgd(steps=40, batch_size=2) | {"data": hierarchy}).run_flops


async def test_an_sgd_job_that_would_run_for_years_is_refused_naming_its_epochs(service):
    request = {"data": {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 256},
               "network": {"hidden": [4000, 4000]}, "init": {"scheme": "gaussian", "scale": 0.001, "seed": 0},
               "training": {"method": "sgd", "learning_rate": 1e-6, "batch_size": 1, "epochs": 100_000},
               "record": {"points": 2}}
    response, cpu = await timed(service.client.post("/v1/simulations", json=request))
    problem = assert_problem(response, 422, "limit-exceeded")
    assert problem["errors"][0]["field"] == ["training", "epochs"] and "DLNSIM_MAX_JOB_FLOPS" in problem["detail"]
    assert cpu < CHEAP_SECONDS, cpu
    assert service.job_count() == 0


def test_momentum_adds_its_buffers_update_to_every_step():
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 1000}
    plain = cost_of(small_request(training=gd)).run_flops
    heavy_ball = cost_of(small_request(training={**gd, "momentum": 0.9})).run_flops
    nesterov = cost_of(small_request(training={**gd, "momentum": 0.9, "nesterov": True})).run_flops
    weights = 3 * 2 + 2 * 3
    assert heavy_ball - plain == pytest.approx(1000 * 6 * weights)
    assert nesterov == heavy_ball


def teacher_phase(seed: int, until: float | None = None) -> dict:
    phase = {"data": {"kind": "preset", "name": "random_teacher", "n_in": 600, "n_out": 600, "n_samples": 600,
                      "seed": seed}}
    return phase if until is None else phase | {"until": until}


def three_phases() -> dict:
    return {"data": {"kind": "sequence", "phases": [teacher_phase(0, 1.0), teacher_phase(1, 2.0), teacher_phase(2)]},
            "network": {"hidden": [600]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
            "training": {"method": "gd", "learning_rate": 1e-4, "steps": 30_000}, "record": {"points": 2}}


def test_a_sequence_costs_the_building_of_every_phase():
    sequence = three_phases()
    single = cost_of(sequence | {"data": teacher_phase(0)["data"]})
    assert cost_of(sequence).data_flops == pytest.approx(3 * single.data_flops)
    assert cost_of(sequence).validation_bytes > 2 * single.validation_bytes  # every phase's problem held at once


async def test_a_sequence_whose_phases_together_exceed_the_validation_budget_is_refused_naming_its_phases(service):
    sequence = three_phases()
    one = sequence | {"data": teacher_phase(0)["data"]}
    assert cost_of(one).validation_flops < Limits().max_validation_flops  # each phase alone would be admitted
    response, cpu = await timed(service.client.post("/v1/simulations", json=sequence))
    problem = assert_problem(response, 422, "limit-exceeded")
    assert problem["errors"][0]["field"] == ["data", "phases"] and "DLNSIM_MAX_VALIDATION_FLOPS" in problem["detail"]
    assert cpu < CHEAP_SECONDS, cpu


def test_the_sharpness_costs_its_hessian_vector_products_per_eigenvalue_and_record():
    plain = cost_of(small_request(record={"points": 200})).run_flops
    one = cost_of(small_request(record={"points": 200, "sharpness": True})).run_flops
    three = cost_of(small_request(record={"points": 200, "sharpness": True, "sharpness_k": 3})).run_flops
    gd_step = 2 * (3 * 2 * 12 + 2 * 2 * 2)  # small_request's step: n_in = 2, layers 3×2 and 2×3
    assert one - plain == pytest.approx(200 * 100 * 2 * gd_step)  # 100 products an eigenvalue, two steps each
    assert three - plain == pytest.approx(3 * (one - plain))


@pytest.mark.parametrize("settings_overrides", [{"max_job_flops": 1e6}])
async def test_a_sharpness_record_over_the_job_budget_is_refused_naming_record_sharpness(service):
    assert (await service.client.post("/v1/simulations", json=small_request())).status_code == 202
    response = await service.client.post("/v1/simulations", json=small_request(record={"sharpness": True}))
    problem = assert_problem(response, 422, "limit-exceeded")
    assert problem["errors"][0]["field"] == ["record", "sharpness"] and "DLNSIM_MAX_JOB_FLOPS" in problem["detail"]


def test_the_linearized_loss_counts_the_runs_steps_again():
    gd = {"method": "gd", "learning_rate": 0.05, "steps": 1000}
    plain = cost_of(small_request(training=gd, record={"points": 10})).run_flops
    linearized = cost_of(small_request(training=gd, record={"points": 10, "linearized": True})).run_flops
    gd_step = 2 * (3 * 2 * 12 + 2 * 2 * 2)
    assert 1000 * gd_step <= linearized - plain < 1000 * gd_step + 1000


def continuation(job_id: str = "0" * 32, **changes: Any) -> dict:
    return small_request(init={"scheme": "from_simulation", "id": job_id}, **changes)


def test_an_init_from_simulation_costs_its_sources_weights_as_given_ones_plus_their_copy():
    hidden = {"hidden": [300, 300]}
    shapes = [(300, 2), (300, 300), (2, 300)]
    given = cost_of(small_request(network=hidden, init={"scheme": "given", "weights": [
        [[0.01] * cols for _ in range(rows)] for rows, cols in shapes]}))
    copied = cost_of(continuation(network=hidden))
    weights = sum(rows * cols for rows, cols in shapes)
    # read from the store, made Python floats, checked finite, serialised into the stored request: per weight
    assert copied.validation_flops - given.validation_flops >= 300 * weights
    assert copied.validation_bytes - given.validation_bytes >= 32 * weights  # held as Python floats meanwhile
    assert copied.result_bytes - given.result_bytes >= 16 * weights  # the stored request carries them


async def test_a_continuation_too_large_to_copy_is_refused_before_the_store_is_read(service):
    request = {"data": {"kind": "preset", "name": "whitened", "n_in": 64, "n_out": 64},
               "network": {"hidden": [2000, 2000, 2000]}, "init": {"scheme": "from_simulation", "id": "0" * 32},
               "training": {"method": "gd", "learning_rate": 1e-4, "steps": 10}, "record": {"points": 2}}
    response, cpu = await timed(service.client.post("/v1/simulations", json=request))
    problem = assert_problem(response, 422, "limit-exceeded")  # not "no such simulation": nothing was read
    assert problem["errors"][0]["field"] == ["init", "id"] and "DLNSIM_MAX_VALIDATION_FLOPS" in problem["detail"]
    assert cpu < CHEAP_SECONDS, cpu


def test_a_sweep_continuing_from_a_simulation_counts_the_copy_of_its_weights_once():
    from service.jobs.sweep_plan import sweep_cost_estimate
    from service.limits import copy_flops
    from service.schemas import SweepRequest

    base = continuation(network={"hidden": [300, 300]})

    def estimate(points: int):
        grid = {"training.learning_rate": [0.01 * (k + 1) for k in range(points)]}
        return sweep_cost_estimate(SweepRequest.model_validate({"base": base, "grid": grid}), Limits(), 100)

    copy = copy_flops(SimulationRequest.model_validate(base), Limits())
    assert copy > 0
    one, ten = estimate(1).validation_flops, estimate(10).validation_flops
    assert one == pytest.approx(cost_of(base).validation_flops)
    assert ten - one == pytest.approx(9 * (one - copy - cost_of(base).data_flops))  # every point but the copy
