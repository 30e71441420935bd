"""Live runs against a real server: events arrive while the simulation runs, Last-Event-ID resumes without gaps, the
live records are the trajectory's, and a cancel keeps the records made until then."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.live_service import poll, post

pytestmark = pytest.mark.e2e


def seconds_long_request(points: int = 60) -> dict:
    """A GD run of a few seconds on one worker, recording often."""
    return {"data": {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 128},
            "network": {"hidden": [128]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 2},
            "training": {"method": "gd", "learning_rate": 0.01, "steps": 20000, "stop_at_convergence": False},
            "record": {"points": points}}


def hours_long_request() -> dict:
    """A GD run no test waits for, recording about every second."""
    return {"data": {"kind": "preset", "name": "random_teacher", "n_in": 128, "n_out": 128, "n_samples": 256},
            "network": {"hidden": [256]}, "init": {"scheme": "gaussian", "scale": 0.001, "seed": 1},
            "training": {"method": "gd", "learning_rate": 1e-4, "steps": 1_000_000}, "record": {"points": 2000}}


def two_task_request(steps: int, until: float, points: int) -> dict:
    """A GD run that switches from one random teacher to another at t = ``until`` (steps of η = 1e-4)."""
    task = {"kind": "preset", "name": "random_teacher", "n_in": 64, "n_out": 64, "n_samples": 128}
    return {"data": {"kind": "sequence", "phases": [{"data": {**task, "seed": 1}, "until": until},
                                                    {"data": {**task, "seed": 2}}]},
            "network": {"hidden": [128]}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 2},
            "training": {"method": "gd", "learning_rate": 1e-4, "steps": steps, "stop_at_convergence": False},
            "record": {"points": points}}


def stream(client: httpx.Client, job_id: str, last_event_id: str | None = None) -> Iterator[tuple[str, str, dict]]:
    """(event, id, data) of the simulation's event stream, as they arrive."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/simulations/{job_id}/events", headers=headers, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event, event_id, data = "message", None, []
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if data:
                    yield event, event_id, json.loads("\n".join(data))
                event, data = "message", []
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


def test_record_events_arrive_while_the_simulation_runs(client):
    job_id = post(client, seconds_long_request()).json()["id"]
    statuses = []
    for event, _, _ in stream(client, job_id):
        if event == "record" and len(statuses) < 3:
            statuses.append(client.get(f"/v1/simulations/{job_id}").json()["status"])
        if event == "end":
            break
    assert "running" in statuses


def test_the_live_records_are_the_trajectorys_records(client):
    job_id = post(client, seconds_long_request()).json()["id"]
    events = list(stream(client, job_id))
    assert events[-1][0] == "end" and events[-1][2]["status"] == "succeeded"
    records = [data for event, _, data in events if event == "record"]
    trajectory = client.get(f"/v1/simulations/{job_id}/trajectory").json()
    assert [r["index"] for r in records] == list(range(len(trajectory["time"])))
    assert [r["loss"] for r in records] == pytest.approx(trajectory["loss"], rel=1e-12)
    strength = [s[:64] for s in trajectory["modes"]["strength"]]
    assert [v for r in records for v in r["strength"]] == pytest.approx([v for s in strength for v in s], abs=1e-12)


def test_progress_events_say_where_the_run_is(client):
    job_id = post(client, seconds_long_request()).json()["id"]
    progress = [data for event, _, data in stream(client, job_id) if event == "progress"]
    assert progress
    assert all(0 <= p["progress"] <= 1 and p["step"] == round(p["progress"] * 20000) for p in progress)
    assert any(p["eta_seconds"] is not None and p["loss"] is not None for p in progress)


def test_last_event_id_resumes_without_gaps(client):
    job_id = post(client, seconds_long_request()).json()["id"]
    first, last_id = [], None
    for event, event_id, data in stream(client, job_id):
        last_id = event_id
        if event == "record":
            first.append(data["index"])
        if len(first) == 5:
            break  # the connection drops
    rest = [data["index"] for event, _, data in stream(client, job_id, last_id) if event == "record"]
    trajectory = client.get(f"/v1/simulations/{job_id}/trajectory", params={"fields": "time"}).json()
    assert first + rest == list(range(len(trajectory["time"])))


def test_a_client_connecting_after_the_end_gets_end_at_once(client):
    job_id = post(client, seconds_long_request(points=5), Prefer="wait=60").json()["id"]
    events = list(stream(client, job_id))
    assert events[-1][0] == "end" and events[-1][2]["status"] == "succeeded"


def test_a_cancelled_simulation_keeps_the_records_it_made(client):
    job_id = post(client, hours_long_request()).json()["id"]
    seen = []
    for event, _, data in stream(client, job_id):
        if event == "record":
            seen.append(data)
        if len(seen) >= 3:
            break
    partial = client.get(f"/v1/simulations/{job_id}/trajectory").json()
    assert partial["partial"] is True and partial["outcome"] == "running"
    assert client.post(f"/v1/simulations/{job_id}/cancel").status_code == 200
    sim = poll(client, job_id, lambda s: s.get("outcome") == "stopped", timeout=60)
    assert sim["status"] == "cancelled" and sim["outcome"] == "stopped", sim
    kept = client.get(f"/v1/simulations/{job_id}/trajectory").json()
    assert kept["partial"] is True and kept["outcome"] == "stopped"
    assert len(kept["time"]) >= len(seen)
    # equal to round-off: the run may use more BLAS threads than the trajectory's evaluation after it
    assert kept["loss"][:len(seen)] == pytest.approx([r["loss"] for r in seen], rel=1e-12)
    assert kept["product"] is not None  # every member, over the records kept


def test_a_task_sequences_live_records_are_its_trajectorys_records(client):
    job_id = post(client, two_task_request(steps=20000, until=1.0, points=60)).json()["id"]
    events = list(stream(client, job_id))
    assert events[-1][0] == "end" and events[-1][2]["status"] == "succeeded"
    records = [data for event, _, data in events if event == "record"]
    trajectory = client.get(f"/v1/simulations/{job_id}/trajectory").json()
    assert 1 in trajectory["phase"]
    assert [r["index"] for r in records] == list(range(len(trajectory["time"])))
    assert [r["step"] for r in records] == trajectory["step"]
    assert [r["loss"] for r in records] == pytest.approx(trajectory["loss"], rel=1e-12)


def test_a_cancelled_task_sequence_keeps_the_records_of_every_phase(client):
    job_id = post(client, two_task_request(steps=1_000_000, until=0.5, points=2000)).json()["id"]
    seen = []
    for event, _, data in stream(client, job_id):
        if event == "record":
            seen.append(data)
        if seen and seen[-1]["step"] > 5000 + 500:  # well into the second phase (the switch at step 5,000)
            break
    assert client.post(f"/v1/simulations/{job_id}/cancel").status_code == 200
    sim = poll(client, job_id, lambda s: s.get("outcome") == "stopped", timeout=60)
    assert sim["status"] == "cancelled", sim
    kept = client.get(f"/v1/simulations/{job_id}/trajectory").json()
    assert kept["partial"] is True and kept["outcome"] == "stopped"
    assert set(kept["phase"]) == {0, 1} and len(kept["time"]) >= len(seen)
    assert kept["loss"][:len(seen)] == pytest.approx([r["loss"] for r in seen], rel=1e-12)
