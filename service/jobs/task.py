"""The worker side of a job: what runs inside a Dask worker process.

    outcome, blob = run_simulation(job_id, request_json)

The request is validated and built again here (it crossed the wire as the JSON the API accepted), the
core runs with two hooks, and the trajectory document is encoded and compressed here, so that the API
process only moves bytes. Heavy imports happen inside the function: importing this module must stay
cheap for the API process, which only needs the exception classes and names.

Hooks:
* progress → ``Worker.log_event(PROGRESS_TOPIC, {"job", "progress"})``, at most every
  PROGRESS_INTERVAL seconds (log_event is safe from the task thread: it hands the message to the
  worker's event loop). A ``{"job", "started": True}`` event at the start counts the attempt.
* should_stop → the job's ``distributed.Event`` (``cancel_event_name``) on the scheduler: one
  round-trip, made at most every STOP_CHECK_INTERVAL seconds, so a cancel lands within ~0.2 s plus
  the core's own check interval.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

PROGRESS_TOPIC = "dlnsim-progress"
PROGRESS_INTERVAL = 0.5
STOP_CHECK_INTERVAL = 0.2


class JobCancelled(Exception):
    """The run stopped because its job was cancelled."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class JobFailed(Exception):
    """The request could not be simulated; ``problem`` is the RFC 9457 body to store as the error."""

    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(problem)
        self.problem = problem

    def __str__(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("title"))


def cancel_event_name(job_id: str) -> str:
    return f"dlnsim-cancel-{job_id}"


def task_key(job_id: str) -> str:
    return f"sim-{job_id}"


# Problem documents come from service.problems (framework-free, below both api and jobs), so that a job the worker refuses
# reads exactly like a request refused at POST time.


def dynamics_problem(exc: Exception) -> dict[str, Any]:
    """The 422 problem for a core DynamicsError (message, field path, fix)."""
    from service.problems import dynamics_problem_body

    return dynamics_problem_body(exc)


def validation_problem(exc: Any) -> dict[str, Any]:
    """The 422 problem for a pydantic ValidationError (a stored request that no longer validates,
    e.g. after an upgrade changed the schema)."""
    from service.problems import field_error, problem_body
    from service.schemas import strip_union_tags

    errors = [field_error(strip_union_tags(e.get("loc", ())), e.get("type", "invalid"), e.get("msg", ""),
                          "resubmit the simulation with a request valid for this version")
              for e in exc.errors(include_url=False, include_context=False, include_input=False)]
    return problem_body(422, "validation-error",
                        f"the stored request no longer validates ({len(errors)} field(s))", errors=errors[:50])


def internal_problem(detail: str) -> dict[str, Any]:
    """A 500 problem: the job ended for a reason that is not the request's fault."""
    from service.problems import problem_body

    return problem_body(500, "internal", detail)


# -- per-process setup ---------------------------------------------------------------------------

_pinned = False
_pin_lock = threading.Lock()


def worker_max_steps() -> int:
    """The flow run's integrator-step cap in a worker: DLNSIM_MAX_STEPS as the API reads it (embedded
    workers inherit the API's environment; set it on an external cluster's workers too)."""
    from service.settings import Settings

    return int(os.environ.get("DLNSIM_MAX_STEPS", Settings.model_fields["max_steps"].default))


def blas_threads_setting() -> int | None:
    """DLNSIM_BLAS_THREADS: a fixed count, or None for "auto" (the default): a job's share of the host's
    cores, re-decided while it runs (``service.jobs.cores``)."""
    value = os.environ.get("DLNSIM_BLAS_THREADS", "auto").strip().lower()
    return None if value in ("", "auto") else max(1, int(value))


def pin_blas_threads() -> None:
    """Limit BLAS/OpenMP pools to DLNSIM_BLAS_THREADS (one thread with "auto") in this process, once.

    The embedded cluster already starts its workers with OMP/OPENBLAS/MKL_NUM_THREADS set; this
    also covers workers of an external cluster started without them. With "auto", a run's stepping then
    takes its share of the cores (``shared_cores``); everything else in the worker stays on one thread.
    """
    global _pinned
    if _pinned:
        return
    with _pin_lock:
        if _pinned:
            return
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=blas_threads_setting() or 1)
        _pinned = True


_ledger = None


@contextlib.contextmanager
def shared_cores():
    """For the length of a task: the ``blas_threads`` hook giving its share of the host's cores (a slot of
    the host's ``CoreLedger`` held meanwhile), or None when DLNSIM_BLAS_THREADS fixes the count."""
    global _ledger
    if blas_threads_setting() is not None:
        yield None
        return
    from .cores import CoreLedger

    with _pin_lock:
        if _ledger is None:
            _ledger = CoreLedger.for_this_host()
    with _ledger.hold() as share:
        yield share.threads


# -- hooks -----------------------------------------------------------------------------------------


def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # called outside a Dask worker (tests, direct use)
        return None


class _Reporter:
    """progress(fraction) → a throttled log_event on the worker's event stream."""

    def __init__(self, worker, job_id: str, interval: float = PROGRESS_INTERVAL) -> None:
        self.worker, self.job_id, self.interval = worker, job_id, interval
        self.last = -float("inf")

    def send(self, message: dict[str, Any]) -> None:
        if self.worker is not None:
            self.worker.log_event(PROGRESS_TOPIC, {"job": self.job_id, **message})

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.send({"progress": float(fraction)})


class _StopFlag:
    """should_stop() → the job's cancel Event on the scheduler, checked at most every ``interval`` s."""

    def __init__(self, job_id: str, interval: float = STOP_CHECK_INTERVAL) -> None:
        self.name, self.interval = cancel_event_name(job_id), interval
        self.last, self.stop, self.event = -float("inf"), False, None

    def __call__(self) -> bool:
        if self.stop:
            return True
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        try:
            if self.event is None:
                from distributed import Event

                self.event = Event(self.name)  # the worker's client, made once per worker
            self.stop = bool(self.event.is_set())
        except (ValueError, RuntimeError, OSError):
            # Outside a worker, or the scheduler is briefly unreachable: keep running; a lost
            # scheduler ends the task anyway.
            return False
        return self.stop


def start_attempt(job_id: str) -> tuple[_Reporter, _StopFlag]:
    """Announce that a worker started (another attempt of) the job; return its two hooks."""
    reporter = _Reporter(_worker(), job_id)
    reporter.send({"started": True, "pid": os.getpid()})
    return reporter, _StopFlag(job_id)


# -- the task --------------------------------------------------------------------------------------


def simulate_request(request_json: bytes, hooks: Any = None) -> tuple[str, bytes]:
    """The work of a simulation task without its bookkeeping: validate the request, build it, simulate it,
    pack the trajectory's arrays (``service.codec``); return (outcome, packed trajectory).

    Raises what the core raises (DynamicsError, StopRequested) and pydantic's ValidationError.
    """
    from service.codec import arrays_of, pack
    from service.build import build_run
    from service.dynamics.simulate import simulate
    from service.schemas import SimulationRequest

    request = SimulationRequest.model_validate_json(request_json)
    spec = build_run(request, max_flow_steps=worker_max_steps())
    traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype, hooks=hooks)
    return str(traj.outcome), pack(arrays_of(traj))


def run_simulation(job_id: str, request_json: bytes) -> tuple[str, bytes]:
    """Validate, build and simulate one request; return (outcome, packed trajectory).

    Raises JobCancelled when the job's cancel flag is seen, JobFailed(problem) when the core rejects
    the request. Any other exception is a bug and reaches the engine as is.
    """
    pin_blas_threads()
    from pydantic import ValidationError

    from service.dynamics.errors import DynamicsError, StopRequested
    from service.dynamics.methods import Hooks

    reporter, should_stop = start_attempt(job_id)
    if should_stop():  # cancelled while queued: do not even build it
        raise JobCancelled(job_id)
    try:
        with shared_cores() as blas_threads:
            return simulate_request(request_json, Hooks(progress=reporter, should_stop=should_stop,
                                                        blas_threads=blas_threads))
    except StopRequested:
        raise JobCancelled(job_id) from None
    except DynamicsError as exc:
        raise JobFailed(dynamics_problem(exc)) from None
    except ValidationError as exc:
        raise JobFailed(validation_problem(exc)) from None


# -- sweeps: a chunk of points -------------------------------------------------------------------------

SWEEP_PROGRESS_TOPIC = "dlnsim-sweep-progress"


def sweep_chunk_key(sweep_id: str, ks: list[int]) -> str:
    """A fixed key per (sweep, set of points): resubmitting the same chunk re-attaches to it."""
    import hashlib

    digest = hashlib.sha1(",".join(map(str, ks)).encode()).hexdigest()[:12]
    return f"sweep-{sweep_id}-{ks[0]}-{len(ks)}-{digest}"


class _SweepReporter:
    """progress(fraction of the chunk) → a throttled log_event on SWEEP_PROGRESS_TOPIC."""

    def __init__(self, worker, sweep_id: str, chunk: str, interval: float = PROGRESS_INTERVAL) -> None:
        self.worker, self.interval = worker, interval
        self.tag = {"sweep": sweep_id, "chunk": chunk}
        self.last = -float("inf")

    def send(self, message: dict[str, Any]) -> None:
        if self.worker is not None:
            self.worker.log_event(SWEEP_PROGRESS_TOPIC, {**self.tag, **message})

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.send({"progress": float(fraction)})


def failed_point(k: int, problem: dict[str, Any]) -> dict[str, Any]:
    """The result row of sweep point ``k`` that failed with ``problem``."""
    return {"k": k, "status": "failed", "outcome": None, "summary": None, "error": problem, "trajectory": None}


def _run_points(built: list, results: dict[int, dict[str, Any]], hooks: Any) -> list:
    """Run a chunk's built points as one ``simulate_batch``; [((k, spec), trajectory)]. A point the batch
    refuses (validated at POST, so only after an upgrade): the points run one by one so that only that point
    fails (its problem goes into ``results``)."""
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
                results[k] = failed_point(k, dynamics_problem(exc))
        return done


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
    from pydantic import ValidationError

    from service.codec import arrays_of, pack
    from service.build import build_run
    from service.dynamics.errors import DynamicsError, StopRequested
    from service.dynamics.methods import Hooks
    from service.grid import GridError, apply_params, point_summary
    from service.schemas import SimulationRequest

    reporter = _SweepReporter(_worker(), sweep_id, chunk)
    # The points travel with the event so that anyone subscribed can tell which points ran where.
    reporter.send({"started": True, "pid": os.getpid(), "points": [k for k, _ in items]})
    should_stop = _StopFlag(sweep_id)
    if should_stop():  # cancelled while queued
        raise JobCancelled(sweep_id)

    base = orjson.loads(base_json)
    results: dict[int, dict[str, Any]] = {}
    built = []
    for k, params_json in items:
        try:
            request = SimulationRequest.model_validate_json(orjson.dumps(apply_params(base, orjson.loads(params_json))))
            built.append((k, build_run(request, max_flow_steps=worker_max_steps())))
        except DynamicsError as exc:
            results[k] = failed_point(k, dynamics_problem(exc))
        except ValidationError as exc:
            results[k] = failed_point(k, validation_problem(exc))
        except GridError as exc:
            from service.problems import field_error, problem_body

            results[k] = failed_point(k, problem_body(422, "validation-error", exc.message,
                                                errors=[field_error(exc.field, exc.code, exc.message, exc.fix)]))

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
