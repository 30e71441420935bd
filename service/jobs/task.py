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


# Problem documents come from service.api.problems (framework-free), so that a job the worker refuses
# reads exactly like a request refused at POST time.


def dynamics_problem(exc: Exception) -> dict[str, Any]:
    """The 422 problem for a core DynamicsError (message, field path, fix)."""
    from service.api.problems import dynamics_problem_body

    return dynamics_problem_body(exc)


def validation_problem(exc: Any) -> dict[str, Any]:
    """The 422 problem for a pydantic ValidationError (a stored request that no longer validates,
    e.g. after an upgrade changed the schema)."""
    from service.api.problems import field_error, problem_body

    from service.schemas import strip_union_tags

    errors = [field_error(strip_union_tags(e.get("loc", ())), e.get("type", "invalid"), e.get("msg", ""),
                          "resubmit the simulation with a request valid for this version")
              for e in exc.errors(include_url=False, include_context=False, include_input=False)]
    return problem_body(422, "validation-error",
                        f"the stored request no longer validates ({len(errors)} field(s))", errors=errors[:50])


def internal_problem(detail: str) -> dict[str, Any]:
    """A 500 problem: the job ended for a reason that is not the request's fault."""
    from service.api.problems import problem_body

    return problem_body(500, "internal", detail)


# -- per-process setup ---------------------------------------------------------------------------

_pinned = False
_pin_lock = threading.Lock()


def pin_blas_threads() -> None:
    """Limit BLAS/OpenMP pools to DLNSIM_BLAS_THREADS (default 1) in this process, once.

    The embedded cluster already starts its workers with OMP/OPENBLAS/MKL_NUM_THREADS set; this
    also covers workers of an external cluster started without them.
    """
    global _pinned
    if _pinned:
        return
    with _pin_lock:
        if _pinned:
            return
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(os.environ.get("DLNSIM_BLAS_THREADS", "1")))
        _pinned = True


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


def run_simulation(job_id: str, request_json: bytes) -> tuple[str, bytes]:
    """Validate, build and simulate one request; return (outcome, compressed trajectory JSON).

    Raises JobCancelled when the job's cancel flag is seen, JobFailed(problem) when the core rejects
    the request. Any other exception is a bug and reaches the engine as is.
    """
    pin_blas_threads()
    import orjson
    from pydantic import ValidationError

    from service.convert import build_simulation, trajectory_document
    from service.dynamics.errors import DynamicsError, StopRequested
    from service.dynamics.methods import Hooks
    from service.dynamics.simulate import simulate
    from service.schemas import SimulationRequest

    from .store import compress_result

    reporter, should_stop = start_attempt(job_id)
    if should_stop():  # cancelled while queued: do not even build it
        raise JobCancelled(job_id)
    try:
        request = SimulationRequest.model_validate_json(request_json)
        spec = build_simulation(request)
        traj = simulate(spec.problem, spec.weights0, spec.method, spec.record, dtype=spec.dtype,
                        hooks=Hooks(progress=reporter, should_stop=should_stop))
    except StopRequested:
        raise JobCancelled(job_id) from None
    except DynamicsError as exc:
        raise JobFailed(dynamics_problem(exc)) from None
    except ValidationError as exc:
        raise JobFailed(validation_problem(exc)) from None
    data = orjson.dumps(trajectory_document(traj), option=orjson.OPT_SERIALIZE_NUMPY)
    return str(traj.outcome), compress_result(data)
