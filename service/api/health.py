"""Liveness and readiness probes, the service's own description (/v1/service-info), and the problem-type pages that
problem ``type`` URIs point to."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from service.api.deps import SettingsDep
from service.api.errors import problem_responses
from service.jobs.database import recovery_advice
from service.jobs.worker import provenance
from service.limits import Limits
from service.problems import PROBLEM_TYPES, ProblemError, problem_type
from service.schemas import Health, Provenance, Readiness, ServiceInfo

router = APIRouter(tags=["health"])

# A probe must answer quickly even when the store's disk hangs.
STORE_PING_TIMEOUT = 2.0


def _store_state(db) -> tuple[bool, int | None]:
    """(the store answers, its free bytes), read in a thread."""
    if not db.ping():
        return False, None
    try:
        return True, db.free_bytes()
    except Exception:  # noqa: BLE001 - the store answered: its space is only unknown
        return True, None


@router.get("/healthz", response_model=Health, responses=problem_responses(),
            summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503),
            summary="Readiness: the job store answers and every worker of the cluster is warm")
async def readyz(request: Request) -> Readiness:
    """Ready when the job store answers and the cluster has workers that have all compiled the GD kernels
    (their warm-up, service/jobs/warmup.py): a job submitted then starts without compiling. Otherwise a 503
    whose detail says what it is waiting for."""
    waiting, workers, warm = await readiness(request.app)
    if waiting:
        raise ProblemError(503, "unavailable", f"not ready: {'; '.join(waiting)}", headers={"Retry-After": "2"})
    return Readiness(status="ready", store=True, worker=True, workers=workers, workers_warm=warm)


async def readiness(app) -> tuple[list[str], int, int]:
    """(what the service still waits for, workers connected, workers warm): ready when the list is empty. What
    /readyz answers, and what ``python -m service`` waits for before its ready line (service/ready.py)."""
    store = getattr(app.state, "store", None)
    engine = getattr(app.state, "engine", None)
    store_ok, free = False, None
    if store is not None:
        try:
            store_ok, free = await asyncio.wait_for(run_in_threadpool(_store_state, store.db), STORE_PING_TIMEOUT)
        except Exception:  # noqa: BLE001 - any failure means not ready
            store_ok = False
    worker_ok, workers, warm = False, 0, 0
    if engine is not None:
        try:
            worker_ok = bool(await engine.ready())
            if worker_ok:
                workers, warm = await engine.warm_workers()
        except Exception:  # noqa: BLE001
            worker_ok = False
    waiting = [f"{name} unreachable" for name, ok in (("job store", store_ok), ("worker cluster", worker_ok))
               if not ok]
    if store is not None and store.db.damaged:
        waiting[:1] = [f"job store damaged ({store.db.damaged}): {recovery_advice(store.db.path)}"]
    elif store_ok:
        minimum = app.state.settings.store_min_free_bytes
        if store.db.full_since is not None or (free is not None and free < minimum):
            waiting.append(f"job store full: {free} bytes free, below the {minimum} it keeps "
                           "(DLNSIM_STORE_MIN_FREE_BYTES); new work is refused with 507 until space is freed")
    if worker_ok and warm < workers:
        waiting.append(f"{workers - warm} of {workers} workers still compiling the GD kernels (warm-up: a few "
                       "seconds with the kernel cache `make run` fills, about a minute without)")
    elif worker_ok and workers == 0:
        waiting.append("no worker connected")
    return waiting, workers, warm


CITE = ("dlnsim: learning dynamics of deep linear networks, over HTTP (version {version}); see CITATION.cff, and cite "
        "the theory each overlay names (its theory_source) with it")


@router.get("/v1/service-info", response_model=ServiceInfo, responses=problem_responses(),
            summary="The service: version, what it runs with, workers and limits")
async def service_info(request: Request, settings: SettingsDep) -> ServiceInfo:
    """What this service is and what it runs with; each run's own provenance is on the simulation."""
    engine = getattr(request.app.state, "engine", None)
    workers, warm = (await engine.warm_workers()) if engine is not None else (0, 0)
    process = await run_in_threadpool(provenance)
    limits = Limits.from_settings(settings)
    return ServiceInfo(version=process["dlnsim"], provenance=Provenance(**process), workers=workers,
                       workers_warm=warm, limits={name: int(getattr(limits, name))  # all integral (FLOP budgets too)
                               for name in limits.__dataclass_fields__},
                       cite=CITE.format(version=process["dlnsim"]))


@router.get("/problems/{slug}", include_in_schema=False)
async def problem_type_page(slug: str) -> dict:
    if slug not in PROBLEM_TYPES:
        raise ProblemError(404, "not-found", f"no problem type {slug!r}")
    title, description = PROBLEM_TYPES[slug]
    return {"type": problem_type(slug), "title": title, "description": description}
