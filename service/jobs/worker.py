"""The worker side of a job, apart from the work itself (``tasks``): set-up of a worker process and the hooks a
running task reports and stops through.

Hooks:
* progress → ``Worker.log_event(topic, {…, "progress"})``, at most every PROGRESS_INTERVAL seconds (log_event is
  safe from the task thread: it hands the message to the worker's event loop). A ``{…, "started": True}`` event
  at the start counts the attempt.
* should_stop → the job's ``distributed.Event`` (``cancel_event_name``) on the scheduler: one round-trip, made at
  most every STOP_CHECK_INTERVAL seconds, so a cancel lands within ~0.2 s plus the core's own check interval.

Importing this module must stay cheap: the API process imports it for the exception classes and names; heavy
imports happen inside the functions.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
from typing import Any

PROGRESS_TOPIC = "dlnsim-progress"
PROGRESS_INTERVAL = 0.5
# A live record carries the strengths of this many modes at most (the strongest first): what a live curve can show,
# and a bound on the API's memory for a running job's records (docs: the events route).
LIVE_MODES = 64
# Records per message at most: a fast run's records leave in messages of bounded size.
RECORDS_PER_MESSAGE = 500
STOP_CHECK_INTERVAL = 0.2
SWEEP_PROGRESS_TOPIC = "dlnsim-sweep-progress"
# The outcome of a simulation task that was cancelled while it ran and returns the records it made until then.
STOPPED = "stopped"


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



def sweep_chunk_key(sweep_id: str, ks: list[int]) -> str:
    """A fixed key per (sweep, set of points): resubmitting the same chunk re-attaches to it."""
    digest = hashlib.sha1(",".join(map(str, ks)).encode()).hexdigest()[:12]
    return f"sweep-{sweep_id}-{ks[0]}-{len(ks)}-{digest}"


# -- per-process set-up ---------------------------------------------------------------------------

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


def worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # called outside a Dask worker (tests, direct use)
        return None

class Reporter:
    """progress(fraction) → a throttled ``log_event`` on ``topic``, each message carrying ``tag``."""

    def __init__(self, worker, topic: str, tag: dict[str, Any], interval: float = PROGRESS_INTERVAL) -> None:
        self.worker, self.topic, self.tag, self.interval = worker, topic, tag, interval
        self.last = -float("inf")

    def send(self, message: dict[str, Any]) -> None:
        if self.worker is not None:
            self.worker.log_event(self.topic, {**self.tag, **message})

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.send({"progress": float(fraction)})


class LiveReporter(Reporter):
    """A simulation's live view, as hooks: ``progress`` (throttled) sends the fraction with the step, the time, an
    estimate of the seconds left and the latest record's loss; ``records`` (``Hooks.records``) summarises new records
    (``service.dynamics.live``), sent with the next progress message; ``flush`` sends what is left at the end.

    Messages on PROGRESS_TOPIC: ``{"job", "attempt", "progress", "step", "time", "eta_seconds", "loss",
    "test_loss", "records": [...]}`` (records only when there are new ones)."""

    def __init__(self, worker, job_id: str, attempt: str) -> None:
        super().__init__(worker, PROGRESS_TOPIC, {"job": job_id, "attempt": attempt})
        self.live = None
        self.steps: int | None = None
        self.t_end: float | None = None
        self.pending: list[dict[str, Any]] = []
        self.latest: dict[str, Any] = {}
        self.started: float | None = None
        self.last_fraction = 0.0

    def begin(self, spec: Any) -> None:
        """Know the run: its problem or task sequence (for the record summaries) and its length."""
        from service.dynamics.live import LiveRecords
        from service.dynamics.methods import GradientDescent, StochasticGradientDescent
        from service.dynamics.sequence import TaskSequence

        method = spec.method
        if isinstance(method, StochasticGradientDescent) and not isinstance(spec.problem, TaskSequence):
            self.steps = int(method.total_steps(spec.problem.samples.n))
            self.t_end = self.steps * float(method.learning_rate)
        elif isinstance(method, GradientDescent):
            self.steps, self.t_end = int(method.steps), int(method.steps) * float(method.learning_rate)
        else:
            self.t_end = float(getattr(method, "t_end", getattr(method, "t_max", 0.0)))
        hidden = [w.shape[0] for w in spec.weights0[:-1]]
        if isinstance(spec.problem, TaskSequence):  # strengths on the first task's modes, as its trajectory's
            self.live = LiveRecords.for_sequence(spec.problem, hidden, method, spec.record)
        else:
            self.live = LiveRecords(spec.problem, hidden)
        self.send({"singular_values": [float(s) for s in self.live.basis.s[:LIVE_MODES]]})

    def records(self, start: int, run: Any) -> None:
        if self.live is None:
            return
        rows = self.live.summaries(start, run, LIVE_MODES)
        self.pending.extend(rows)
        self.latest = rows[-1] if rows else self.latest

    def computed(self) -> Any:
        """The products behind the records summarised so far (``Hooks.computed``), for the final trajectory."""
        return None if self.live is None else self.live.computed()

    def _message(self, fraction: float) -> dict[str, Any]:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        elapsed = now - self.started
        return {"progress": float(fraction),
                "step": None if self.steps is None else int(round(fraction * self.steps)),
                "time": None if self.t_end is None else fraction * self.t_end,
                "eta_seconds": elapsed * (1.0 - fraction) / fraction if 0.0 < fraction < 1.0 and elapsed > 0 else None,
                "loss": self.latest.get("loss"), "test_loss": self.latest.get("test_loss")}

    def __call__(self, fraction: float) -> None:
        self.last_fraction = fraction
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._send(self._message(fraction))

    def _send(self, message: dict[str, Any]) -> None:
        while len(self.pending) > RECORDS_PER_MESSAGE:
            self.send({"records": self.pending[:RECORDS_PER_MESSAGE]})
            del self.pending[:RECORDS_PER_MESSAGE]
        if self.pending:
            message = {**message, "records": self.pending}
            self.pending = []
        self.send(message)

    def flush(self, fraction: float = 1.0) -> None:
        """Send the records not sent yet, with a last progress message."""
        self._send(self._message(fraction))


class StopFlag:
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


def provenance() -> dict[str, Any]:
    """What this process runs jobs with: dlnsim, Python, numpy, scipy and numba versions, the BLAS numpy calls
    (library, version, threads now) and the one the GD loop calls, DLNSIM_BLAS_THREADS, the host's cores. Sent with
    every task's start: the versions are read once a process, the BLAS pool from the engine's own controller."""
    from service.dynamics import gd_loop
    from service.dynamics.gd import blas_pool_info

    blas = blas_pool_info()
    return {**_versions(), "blas": {"library": blas.get("internal_api"), "version": blas.get("version"),
                                    "threads": blas.get("num_threads"), "gd_loop": gd_loop.BLAS},
            "blas_threads_setting": os.environ.get("DLNSIM_BLAS_THREADS", "auto"), "host_cores": os.cpu_count()}


@functools.cache
def _versions() -> dict[str, str | None]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"dlnsim": installed("dlnsim") or "0.0.0", "python": platform.python_version(),
            "numpy": installed("numpy"), "scipy": installed("scipy"), "numba": installed("numba")}


def start_attempt(job_id: str) -> tuple[LiveReporter, StopFlag]:
    """Announce that a worker started (another attempt of) the job, with what it runs it with and a token naming
    the attempt (the live view's events of one attempt share it); return its two hooks."""
    import uuid

    reporter = LiveReporter(worker(), job_id, uuid.uuid4().hex[:12])
    reporter.send({"started": True, "pid": os.getpid(), "provenance": provenance()})
    return reporter, StopFlag(job_id)

