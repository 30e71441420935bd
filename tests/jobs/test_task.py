"""The worker-side task, called in-process (no cluster): results, error mapping, hooks."""

from __future__ import annotations

import pickle

import orjson
import pytest

from service import codec
from service.jobs.tasks import run_simulation
from service.jobs.worker import (
    PROGRESS_TOPIC,
    JobCancelled,
    JobFailed,
    Reporter,
    StopFlag,
    cancel_event_name,
)


def test_run_simulation_returns_the_outcome_and_the_packed_trajectory():
    from service.build import build_run
    from service.dynamics.simulate import simulate
    from service.schemas import CORRELATIONS_EXAMPLE, SimulationRequest

    outcome, blob = run_simulation("job", orjson.dumps(CORRELATIONS_EXAMPLE))
    spec = build_run(SimulationRequest.model_validate(CORRELATIONS_EXAMPLE))
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype)
    # Same process, same inputs: the same bits (the flow integrator is deterministic).
    assert blob == codec.pack(codec.arrays_of(traj))
    assert outcome == traj.outcome


def test_core_error_becomes_job_failed_naming_the_field():
    from service.schemas import CORRELATIONS_EXAMPLE

    request = orjson.loads(orjson.dumps(CORRELATIONS_EXAMPLE))
    request["data"]["sigma11"] = [[1.0, 0.5], [0.0, 1.0]]
    with pytest.raises(JobFailed) as info:
        run_simulation("job", orjson.dumps(request))
    problem = info.value.problem
    assert problem["status"] == 422 and problem["type"].startswith("/problems/")
    assert problem["errors"][0]["field"] == ["data", "sigma11"]


def test_flow_over_dlnsim_max_steps_fails_with_limit_exceeded_naming_t_max(monkeypatch):
    """Workers cap a flow run's integrator steps at DLNSIM_MAX_STEPS: a stiff problem over a long t_max
    fails with a reason instead of holding a worker for hours."""
    monkeypatch.setenv("DLNSIM_MAX_STEPS", "50")
    request = {"data": {"kind": "correlations", "sigma11": [[1000.0, 0.0], [0.0, 0.001]], "sigma31": [[1.0, 1.0]]},
               "network": {"hidden": []}, "init": {"scheme": "gaussian", "scale": 0.01, "seed": 0},
               "training": {"method": "flow", "t_max": 10_000.0}}
    with pytest.raises(JobFailed) as info:
        run_simulation("job", orjson.dumps(request))
    problem = info.value.problem
    assert problem["status"] == 422 and problem["type"].endswith("/limit-exceeded")
    assert problem["errors"][0]["field"] == ["training", "t_max"]


def test_stored_request_that_no_longer_validates_becomes_job_failed():
    with pytest.raises(JobFailed) as info:
        run_simulation("job", b'{"network": {"hidden": [2]}}')
    problem = info.value.problem
    assert problem["status"] == 422
    assert ["data"] in [e["field"] for e in problem["errors"]]


@pytest.mark.parametrize("exc", [JobCancelled("abc"), JobFailed({"title": "t", "detail": "d"})])
def test_job_exceptions_survive_pickling(exc):
    # They travel from the worker process to the API process pickled.
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc) and again.args == exc.args
    assert getattr(again, "job_id", None) == getattr(exc, "job_id", None)
    assert getattr(again, "problem", None) == getattr(exc, "problem", None)


class FakeWorker:
    def __init__(self):
        self.events = []

    def log_event(self, topic, msg):
        self.events.append((topic, msg))


def test_progress_is_reported_at_most_once_per_interval():
    worker = FakeWorker()
    report = Reporter(worker, PROGRESS_TOPIC, {"job": "job"}, interval=3600.0)
    for i in range(100):
        report(i / 100)
    assert worker.events == [("dlnsim-progress", {"job": "job", "progress": 0.0})]


class CountingEvent:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def is_set(self):
        self.calls += 1
        return self.value


def test_stop_flag_asks_the_scheduler_at_most_once_per_interval():
    flag = StopFlag("job", interval=3600.0)
    flag.event = CountingEvent(False)
    assert not any(flag() for _ in range(100))
    assert flag.event.calls == 1


def test_stop_flag_stays_true_once_seen():
    flag = StopFlag("job", interval=0.0)
    flag.event = CountingEvent(True)
    assert flag() and flag()
    assert flag.event.calls == 1
    assert flag.name == cancel_event_name("job")


def test_stop_flag_outside_a_worker_is_false():
    assert not StopFlag("job", interval=0.0)()
