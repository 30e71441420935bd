"""GET /v1/simulations/{id}/events (Server-Sent Events) and the partial trajectory of a running or cancelled simulation,
with the worker's messages played into the engine's live feeds (the real ``service.jobs.live.LiveFeeds``).

A running job's stream stays open, so these in-process tests finish the job in the store before they read a stream
to its end; a stream read while the job runs is tested against a real server in tests/e2e.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from tests.api.conftest import assert_problem, small_request
from tests.support.events import parse_events
from tests.support.trajectories import packed

pytestmark = pytest.mark.anyio

RECORDS = [{"index": i, "time": 0.5 * i, "step": 10 * i, "loss": 1.0 / (i + 1), "excess_loss": 0.5 / (i + 1),
            "test_loss": None, "strength": [0.1 * i, 0.01 * i]} for i in range(6)]


async def running_job(service, records=RECORDS, attempt="a1", progress=0.4):
    created = await service.client.post("/v1/simulations", json=small_request())
    job_id = created.json()["id"]
    service.store.mark_running(job_id)
    service.engine.live.start(job_id, attempt)
    service.engine.live.update(job_id, attempt, {"singular_values": [2.0, 0.5]})
    service.engine.live.update(job_id, attempt, {"progress": progress, "step": 40, "time": 2.0, "eta_seconds": 3.0,
                                                 "loss": records[-1]["loss"] if records else None,
                                                 "test_loss": None, "records": list(records)})
    return job_id


async def events(service, job_id, **headers):
    """The whole stream of a finished job."""
    response = await service.client.get(f"/v1/simulations/{job_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_events(response.text)


async def events_until_it_finishes(service, job_id, **headers):
    """The whole stream of a running job that finishes while the client follows it."""
    reading = asyncio.create_task(events(service, job_id, **headers))
    await asyncio.sleep(0.1)
    assert not reading.done()
    service.finish(job_id, _document())
    service.engine.live.end(job_id)
    return await asyncio.wait_for(reading, 10)


async def test_events_of_an_unknown_simulation_are_a_404_problem(service):
    assert_problem(await service.client.get("/v1/simulations/nope/events"), 404)


async def test_a_client_coming_after_the_end_gets_only_the_end(service):
    job_id = await running_job(service)
    service.finish(job_id, _document())
    service.engine.live.end(job_id)
    stream = await events(service, job_id)
    assert [e.event for e in stream] == ["end"]
    assert stream[-1].data == {"status": "succeeded", "outcome": "converged", "error": None}


async def test_records_come_in_order_then_progress_then_end(service):
    job_id = await running_job(service)
    stream = await events_until_it_finishes(service, job_id)
    assert [e.event for e in stream] == ["record"] * len(RECORDS) + ["progress", "end"]
    assert [e.data for e in stream if e.event == "record"] == RECORDS
    assert stream[len(RECORDS)].data == {"step": 40, "time": 2.0, "progress": 0.4, "loss": RECORDS[-1]["loss"],
                                         "test_loss": None, "eta_seconds": 3.0}


async def test_every_event_has_an_id_and_the_first_asks_for_a_retry_delay(service):
    job_id = await running_job(service)
    stream = await events_until_it_finishes(service, job_id)
    assert all(e.id for e in stream)
    assert len({e.id for e in stream}) == len(stream)
    assert stream[0].retry == 1000


async def test_last_event_id_resumes_after_that_event(service):
    job_id = await running_job(service)
    first = await events_until_it_finishes(service, job_id)
    resumed = await events(service, job_id, **{"Last-Event-ID": first[2].id})
    assert [e.data["index"] for e in resumed if e.event == "record"] == [3, 4, 5]
    assert [e.id for e in resumed] == [e.id for e in first[3:]]


async def test_a_last_event_id_of_another_run_replays_the_current_run(service):
    job_id = await running_job(service, attempt="second")
    resumed = await events_until_it_finishes(service, job_id, **{"Last-Event-ID": "first.3"})
    assert [e.data["index"] for e in resumed if e.event == "record"] == list(range(len(RECORDS)))


async def test_a_garbled_last_event_id_replays_from_the_start(service):
    job_id = await running_job(service)
    resumed = await events_until_it_finishes(service, job_id, **{"Last-Event-ID": "not an id"})
    assert len([e for e in resumed if e.event == "record"]) == len(RECORDS)


async def test_records_beyond_the_record_limit_are_not_kept(service):
    job_id = await running_job(service, records=RECORDS * 3000)
    assert len(service.engine.live.records(job_id)) == service.settings.max_record_points


# -- the partial trajectory ----------------------------------------------------------------------------------------


async def test_a_running_simulations_trajectory_is_its_records_so_far(service):
    job_id = await running_job(service)
    response = await service.client.get(f"/v1/simulations/{job_id}/trajectory")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["partial"] is True and doc["outcome"] == "running" and doc["method"] == "gd"
    assert doc["time"] == [r["time"] for r in RECORDS]
    assert doc["step"] == [r["step"] for r in RECORDS]
    assert doc["loss"] == [r["loss"] for r in RECORDS]
    assert doc["excess_loss"] == [r["excess_loss"] for r in RECORDS]
    assert doc["modes"]["strength"] == [r["strength"] for r in RECORDS]
    assert doc["product"] is None and doc["test_loss"] is None


async def test_a_running_simulations_npz_holds_the_same_records(service):
    job_id = await running_job(service)
    response = await service.client.get(f"/v1/simulations/{job_id}/trajectory.npz")
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content)) as npz:
        np.testing.assert_array_equal(npz["loss"], [r["loss"] for r in RECORDS])
        np.testing.assert_array_equal(npz["modes_strength"], [r["strength"] for r in RECORDS])
        assert bool(npz["partial"])


async def test_a_running_simulation_without_records_has_no_trajectory_yet(service):
    job_id = await running_job(service, records=[])
    body = assert_problem(await service.client.get(f"/v1/simulations/{job_id}/trajectory"), 409, "not-finished")
    assert "no record yet" in body["detail"]


async def test_a_running_simulations_loss_plot_draws_its_records_so_far(service):
    job_id = await running_job(service)
    response = await service.client.get(f"/v1/simulations/{job_id}/plot.svg", params={"kind": "loss"})
    assert response.status_code == 200, response.text
    assert response.text.lstrip().startswith(("<?xml", "<svg"))


async def test_a_cancelled_simulation_keeps_the_records_it_made(service):
    created = await service.client.post("/v1/simulations", json=small_request())
    job_id = created.json()["id"]
    service.store.mark_running(job_id)
    await service.client.post(f"/v1/simulations/{job_id}/cancel")
    stopped = _document(outcome="stopped", partial=True)
    assert service.store.keep_stopped(job_id, packed(stopped))
    sim = (await service.client.get(f"/v1/simulations/{job_id}")).json()
    assert sim["status"] == "cancelled" and sim["outcome"] == "stopped"
    doc = (await service.client.get(f"/v1/simulations/{job_id}/trajectory")).json()
    assert doc["partial"] is True and doc["outcome"] == "stopped" and doc["loss"] == stopped["loss"]


async def test_a_cancelled_simulation_without_records_has_no_trajectory(service):
    created = await service.client.post("/v1/simulations", json=small_request())
    job_id = created.json()["id"]
    await service.client.post(f"/v1/simulations/{job_id}/cancel")
    assert_problem(await service.client.get(f"/v1/simulations/{job_id}/trajectory"), 409, "not-finished")


def _document(outcome="converged", partial=False):
    """A small finished run's trajectory document, made by the core."""
    from service.dynamics import presets
    from service.dynamics.init import initial_weights
    from service.dynamics.methods import GradientDescent
    from service.dynamics.record import RecordSchedule
    from service.dynamics.simulate import simulate
    from tests.support.trajectories import trajectory_document

    problem = presets.hierarchy(depth=2)
    traj = simulate(problem, initial_weights(problem, [4], "gaussian", scale=0.01, seed=0),
                    GradientDescent(learning_rate=0.05, steps=50), RecordSchedule(points=6))
    doc = trajectory_document(traj)
    doc["outcome"], doc["partial"] = outcome, partial
    return doc


async def test_a_running_simulations_modes_plot_draws_its_records_so_far(service):
    job_id = await running_job(service)
    response = await service.client.get(f"/v1/simulations/{job_id}/plot.svg", params={"kind": "modes"})
    assert response.status_code == 200, response.text


async def test_a_running_simulations_product_plot_waits_for_the_end(service):
    job_id = await running_job(service)
    assert_problem(await service.client.get(f"/v1/simulations/{job_id}/plot.svg", params={"kind": "product"}), 409)
