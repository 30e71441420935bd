"""The tasks Dask workers run: a simulation, and a chunk of sweep points.

    outcome, blob = run_simulation(job_id, request_json)
    results = run_sweep_chunk(sweep_id, chunk_key, base_json, [(k, params_json), …], keep)

The request is validated and built again here (it crossed the wire as the JSON the API accepted), the core runs
with the worker's hooks (``worker``), and the trajectory is packed here (``service.codec``: compressed arrays), so
that the API process only moves bytes. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import os
from typing import Any

from .worker import (
    STOPPED,
    SWEEP_PROGRESS_TOPIC,
    JobCancelled,
    JobFailed,
    LiveReporter,
    Reporter,
    StopFlag,
    dynamics_problem,
    pin_blas_threads,
    provenance,
    shared_cores,
    start_attempt,
    validation_problem,
    worker,
    worker_max_steps,
)


def simulate_request(request_json: bytes, hooks: Any = None, live: LiveReporter | None = None) -> tuple[str, bytes]:
    """The work of a simulation task without its bookkeeping: validate the request, build it, simulate it,
    pack the trajectory's arrays (``service.codec``); return (outcome, packed trajectory). ``live`` learns the
    run before it starts (``LiveReporter.begin``) and sends what is left of the live view at its end.

    Raises what the core raises (DynamicsError, StopRequested) and pydantic's ValidationError.
    """
    from service.build import build_run, in_request
    from service.codec import arrays_of, pack
    from service.dynamics.errors import DynamicsError
    from service.dynamics.simulate import simulate
    from service.schemas import SimulationRequest

    request = SimulationRequest.model_validate_json(request_json)
    spec = build_run(request, max_flow_steps=worker_max_steps())
    if live is not None:
        live.begin(spec)
    try:
        traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype, hooks=hooks)
    except DynamicsError as exc:
        raise in_request(exc) from None
    if live is not None:
        live.flush()
    return str(traj.outcome), pack(arrays_of(traj))


def run_simulation(job_id: str, request_json: bytes) -> tuple[str, bytes]:
    """Validate, build and simulate one request; return (outcome, packed trajectory).

    Raises JobCancelled when the job's cancel flag is seen, JobFailed(problem) when the core rejects
    the request. Any other exception is a bug and reaches the engine as is.
    """
    pin_blas_threads()
    from pydantic import ValidationError

    from service.codec import arrays_of, pack
    from service.dynamics.errors import DynamicsError, StopRequested
    from service.dynamics.methods import Hooks

    reporter, should_stop = start_attempt(job_id)
    if should_stop():  # cancelled while queued: do not even build it
        raise JobCancelled(job_id)
    try:
        with shared_cores() as blas_threads:
            return simulate_request(request_json, Hooks(progress=reporter, should_stop=should_stop,
                                                        blas_threads=blas_threads, records=reporter.records,
                                                        computed=reporter.computed),
                                    live=reporter)
    except StopRequested as stop:
        if stop.trajectory is None:
            raise JobCancelled(job_id) from None
        reporter.flush(reporter.last_fraction)
        return STOPPED, pack(arrays_of(stop.trajectory))  # the records up to the cancel, kept
    except DynamicsError as exc:
        raise JobFailed(dynamics_problem(exc)) from None
    except ValidationError as exc:
        raise JobFailed(validation_problem(exc)) from None



# -- sweeps: a chunk of points -------------------------------------------------------------------------


def failed_point(k: int, problem: dict[str, Any]) -> dict[str, Any]:
    """The result row of sweep point ``k`` that failed with ``problem``."""
    return {"k": k, "status": "failed", "outcome": None, "summary": None, "error": problem, "trajectory": None}


def _run_points(built: list, results: dict[int, dict[str, Any]], hooks: Any) -> list:
    """Run a chunk's built points as one ``simulate_batch``; [((k, spec), trajectory)]. A point the batch
    refuses (validated at POST, so only after an upgrade): the points run one by one so that only that point
    fails (its problem goes into ``results``)."""
    from service.build import in_request
    from service.dynamics.batch import SweepPoint, simulate_batch
    from service.dynamics.errors import DynamicsError
    from service.dynamics.simulate import simulate

    try:
        trajectories = simulate_batch([SweepPoint(s.problem, s.weights0, s.method, s.record, dtype=s.dtype)
                                       for _, s in built], hooks=hooks) if built else []
        return list(zip(built, trajectories, strict=True))
    except DynamicsError:
        done = []
        for k, s in built:
            try:
                done.append(((k, s), simulate(s.problem, s.weights0, s.method, s.record, dtype=s.dtype, hooks=hooks)))
            except DynamicsError as exc:
                results[k] = failed_point(k, dynamics_problem(in_request(exc)))
        return done


def build_points(base: dict[str, Any], items: list[tuple[int, bytes]], results: dict[int, dict[str, Any]], *,
                 max_flow_steps: int | None = None) -> list:
    """Each point's request (the base with its values set) validated and built as a single simulation's;
    [(k, spec)]. A point refused here goes into ``results`` with its problem. The points that set no data field share
    the base's problem, built once: its optimum, mode basis and least-squares fit are then computed once a chunk, not
    once a point (and ``simulate_batch`` computes their record products together)."""
    import orjson
    from pydantic import ValidationError

    from service.build import build_run
    from service.dynamics.errors import DynamicsError
    from service.grid import GridError, apply_params, split_path
    from service.schemas import SimulationRequest

    built = []
    base_problem = None
    for k, params_json in items:
        try:
            params = orjson.loads(params_json)
            request = SimulationRequest.model_validate_json(orjson.dumps(apply_params(base, params)))
            keeps_data = not any(split_path(path)[0] == "data" for path in params)
            spec = build_run(request, max_flow_steps=max_flow_steps, problem=base_problem if keeps_data else None)
            if keeps_data:
                base_problem = spec.problem
            built.append((k, spec))
        except DynamicsError as exc:
            results[k] = failed_point(k, dynamics_problem(exc))
        except ValidationError as exc:
            results[k] = failed_point(k, validation_problem(exc))
        except GridError as exc:
            from service.problems import field_error, problem_body

            results[k] = failed_point(k, problem_body(422, "validation-error", exc.message,
                                                errors=[field_error(exc.field, exc.code, exc.message, exc.fix)]))
    return built


def run_sweep_chunk(sweep_id: str, chunk: str, base_json: bytes, items: list[tuple[int, bytes]],
                    keep: str) -> list[dict[str, Any]]:
    """Run a chunk of sweep points as one ``simulate_batch`` call; one result dict per point, in order:

        {"k", "status": "succeeded"|"failed", "outcome", "summary", "error", "trajectory"}

    Each point's request is the sweep's base with its parameter values set (``service.grid``),
    validated and built as a single simulation's request is, so its numbers are the single run's.
    ``trajectory`` is the packed trajectory (``service.codec``) when ``keep == "trajectories"``. A point the core
    refuses fails alone (its problem names the field); the chunk's cancel flag is the sweep's.
    Raises JobCancelled when the sweep is cancelled.
    """
    pin_blas_threads()
    import orjson

    from service.codec import arrays_of, pack
    from service.dynamics.errors import StopRequested
    from service.dynamics.methods import Hooks
    from service.grid import point_summary

    reporter = Reporter(worker(), SWEEP_PROGRESS_TOPIC, {"sweep": sweep_id, "chunk": chunk})
    # The points travel with the event so that anyone subscribed can tell which points ran where.
    reporter.send({"started": True, "pid": os.getpid(), "points": [k for k, _ in items], "provenance": provenance()})
    should_stop = StopFlag(sweep_id)
    if should_stop():  # cancelled while queued
        raise JobCancelled(sweep_id)

    results: dict[int, dict[str, Any]] = {}
    built = build_points(orjson.loads(base_json), items, results, max_flow_steps=worker_max_steps())
    try:
        with shared_cores() as blas_threads:
            done = _run_points(built, results, Hooks(progress=reporter, should_stop=should_stop,
                                                     blas_threads=blas_threads))
    except StopRequested:
        raise JobCancelled(sweep_id) from None

    for (k, _), traj in done:
        blob = None
        if keep == "trajectories":
            blob = pack(arrays_of(traj))
        results[k] = {"k": k, "status": "succeeded", "outcome": str(traj.outcome), "summary": point_summary(traj),
                      "error": None, "trajectory": blob}
    reporter.send({"progress": 1.0})
    return [results[k] for k, _ in items]
