"""The ASGI app: ``service.main:app`` (uvicorn service.main:app, or python -m service).

The lifespan opens the job store (SQLite under DLNSIM_DATA_DIR) and starts the engine (an embedded
Dask LocalCluster, or a client of DLNSIM_SCHEDULER), which resubmits jobs a crash left unfinished.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from threadpoolctl import threadpool_limits

from service.api import compare, events, gradients, health, plots, presets, simulations, sweeps, trajectories
from service.api.access import (
    ApiKeyMiddleware,
    ProblemCORSMiddleware,
    document_security,
    legacy_owner,
    owner_secret,
    parse_api_keys,
    parse_cors_origins,
)
from service.api.body_limit import BodySizeLimitMiddleware
from service.api.docs import install_docs
from service.api.errors import install_error_handlers
from service.api.security import SecurityHeadersMiddleware
from service.api.strict import document_strictness, strict_request
from service.http_server import install_access_log_redaction
from service.jobs.admission import Admission
from service.jobs.database import Database, rename_owners
from service.jobs.downloads import DownloadBudget
from service.jobs.engine import Engine, EngineProtocol
from service.jobs.retention import RetentionTask
from service.jobs.store import JobStore
from service.jobs.submission import Simulations, Sweeps
from service.jobs.sweep_engine import SweepEngine
from service.jobs.sweeps_store import SweepStore
from service.ready import announce_when_ready
from service.schemas import (
    GradientsRequest,
    ProblemDetails,
    SimulationRequest,
    SweepRequest,
)
from service.settings import Settings, get_settings

try:
    VERSION = version("dlnsim")
except PackageNotFoundError:  # running from a source tree that was not installed
    VERSION = "0.0.0"

DESCRIPTION = """\
Learning dynamics of deep linear networks y = W_D⋯W_1 x trained on L = (1/N) Σ ‖y − W x‖²: simulated
(gradient descent, gradient flow) and exact trajectories, with the analytic mode solutions overlaid.

POST a SimulationRequest to /v1/simulations, poll the returned Location (or send `Prefer: wait=30`), then
GET its trajectory. Every error is an RFC 9457 problem (application/problem+json) whose `errors` name the
offending field, what is wrong and how to fix it.
"""

TAGS = [
    {"name": "simulations", "description": "Simulation jobs and their trajectories."},
    {"name": "sweeps", "description": "Parameter sweeps: many simulations from one base request, run in "
                                      "batched chunks across the Dask workers."},
    {"name": "presets", "description": "Built-in learning problems (PNAS 2019 hierarchy, branching diffusion, "
                                       "whitened, random teacher, noisy teacher) and their parameters."},
    {"name": "plots", "description": "Figures of several simulations at once (each simulation's and sweep's own plots "
                                     "are under their resources)."},
    {"name": "gradients", "description": "The loss and its gradient at given weights (the vector field GD and "
                                         "gradient flow follow, docs/theory.md#gradient), answered synchronously."},
    {"name": "health", "description": "Liveness and readiness probes."},
]

STORE_FILE = "dlnsim.sqlite3"


def operation_id(route: APIRoute) -> str:
    """Operation ids are the route functions' names: create_simulation, get_trajectory, healthz, ..."""
    return route.name


def _without_item_schemas(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop the ``itemSchema`` FastAPI writes for event streams: an OpenAPI 3.2 keyword this 3.1 document may not
    hold (validators refuse it; the events route describes its events in words and says ``schema: string``)."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for response in (operation.get("responses") or {}).values() if isinstance(operation, dict) else ():
                for media in (response.get("content") or {}).values():
                    media.pop("itemSchema", None)
    return schema


def _add_component_schemas(schema: dict[str, Any]) -> dict[str, Any]:
    """Make sure the schemas referenced by hand ($ref in responses and the request body) are defined."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ProblemDetails, SimulationRequest, SweepRequest, GradientsRequest):
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in js.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, js)
    return schema


# Settings that are secrets: read once from the environment, then kept from child processes (the embedded Dask
# workers inherit the environment at spawn, and read only the settings they need).
SECRET_VARIABLES = ("DLNSIM_API_KEYS", "DLNSIM_OWNER_SECRET")


class _Hidden:
    def __init__(self, saved: dict[str, str]) -> None:
        self.saved = saved

    def restore(self) -> None:
        for name, value in self.saved.items():
            os.environ.setdefault(name, value)


def hide_secrets_from_children() -> _Hidden:
    """Take SECRET_VARIABLES out of this process's environment (the settings hold them already) until ``restore``."""
    return _Hidden({name: os.environ.pop(name) for name in SECRET_VARIABLES if name in os.environ})


def open_database(settings: Settings) -> Database:
    """The job store of these settings, checked (PRAGMA quick_check) and migrated; StoreDamagedError when damaged."""
    return Database(settings.data_dir / STORE_FILE, max_bytes=settings.store_max_bytes,
                    busy_timeout_ms=int(settings.store_busy_timeout_seconds * 1000),
                    wal_max_bytes=settings.wal_max_bytes)


def create_app(settings: Settings | None = None, *,
               engine_factory: Callable[[Settings, JobStore], EngineProtocol] | None = None) -> FastAPI:
    """The app. ``engine_factory(settings, store)`` replaces the Dask engine (tests of HTTP behaviour)."""
    settings = settings or get_settings()

    api_keys = parse_api_keys(settings.api_keys.get_secret_value() if settings.api_keys else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_access_log_redaction()  # uvicorn has configured its loggers by now: no query value is logged
        # The secrets stay with this process: the workers (spawned now and on restarts) get an environment without
        # them, and are given nothing that needs them.
        hidden = hide_secrets_from_children()
        # Requests are validated with numerics (Σ11's eigenvalues, the GD stability bound's SVD) in many
        # threads at once: one BLAS thread each, like the workers. A multi-threaded BLAS here made a validation
        # of milliseconds take about a second under load and starved the event loop (tests/faults/test_load.py;
        # docs/performance.md#load).
        threadpool_limits(limits=1 if settings.blas_threads == "auto" else settings.blas_threads)
        db = open_database(settings)
        if api_keys:  # unnamed keys' owner ids are keyed hashes (service/api/access.py); earlier plain ones renamed
            app.state.owner_secret = owner_secret(
                settings.owner_secret.get_secret_value() if settings.owner_secret else None, settings.data_dir)
            rename_owners(db, {legacy_owner(k.digest): k.owner_id(app.state.owner_secret)
                               for k in api_keys if k.name is None})
        store = JobStore(db)
        engine = (engine_factory or Engine)(settings, store)
        # Sweeps share the database and the engine's Dask client.
        sweep_store = SweepStore(db)
        sweep_engine = SweepEngine(settings, sweep_store, engine)
        # Admission control (service/jobs/admission.py): validation slots, budgets and quotas, shared by both kinds.
        admission = Admission(settings, db, store, sweep_store,
                              key_owners=len({k.name if k.name is not None else k.digest for k in api_keys}))
        # One memory budget for every trajectory download (service/jobs/downloads.py).
        downloads = DownloadBudget(settings.download_memory_bytes, settings.download_wait_seconds)
        simulations = Simulations(store, sweep_store, engine, settings, admission, downloads)
        sweeps = Sweeps(sweep_store, store, sweep_engine, settings, admission, downloads)
        # Finished jobs older than DLNSIM_RETENTION_DAYS are purged in the background (0: kept forever).
        retention = (RetentionTask(store, sweep_store, days=settings.retention_days,
                                   interval=settings.retention_interval_seconds,
                                   keys_hours=settings.idempotency_keep_hours)
                     if settings.retention_days > 0 else None)
        announcer = None
        try:
            await engine.start()
            await sweep_engine.start()
            app.state.store, app.state.engine = store, engine
            app.state.sweep_store, app.state.sweep_engine = sweep_store, sweep_engine
            app.state.simulations, app.state.sweeps = simulations, sweeps
            app.state.admission, app.state.downloads = admission, downloads
            if retention is not None:
                retention.start()
            app.state.retention = retention
            # python -m service sets announce_ready to its URL: one line once /readyz would answer 200
            url = getattr(app.state, "announce_ready", None)
            if url:
                announcer = asyncio.create_task(announce_when_ready(app, url), name="announce-ready")
            yield
        finally:
            if announcer is not None:
                announcer.cancel()
            app.state.store = app.state.engine = None
            app.state.sweep_store = app.state.sweep_engine = None
            app.state.simulations = app.state.sweeps = None
            app.state.retention = app.state.admission = app.state.downloads = None
            if retention is not None:
                await retention.stop()  # before the store closes: a purge in progress finishes its batch
            await sweep_engine.close()
            await engine.close()
            db.close()
            app.state.owner_secret = None
            hidden.restore()

    app = FastAPI(
        title="dlnsim",
        version=VERSION,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        separate_input_output_schemas=False,
        docs_url=None,      # served from the installed assets instead of a CDN: service.api.docs
        redoc_url=None,
        # every route: 400 for an unknown query parameter, 406 for an Accept it cannot serve (service.api.strict)
        dependencies=[Depends(strict_request)],
    )
    app.state.settings = settings
    app.state.store = app.state.engine = None
    app.state.sweep_store = app.state.sweep_engine = None
    app.state.simulations = app.state.sweeps = None
    app.state.owner_secret = None
    install_error_handlers(app)
    # Outermost last: security headers on everything, CORS (also on 401s, so browsers can read them),
    # then API keys (checked before any body is read), then the body limit.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=api_keys, secret=lambda: app.state.owner_secret)
    cors_origins = parse_cors_origins(settings.cors_origins)
    if cors_origins:
        app.add_middleware(ProblemCORSMiddleware, origins=cors_origins)
    app.add_middleware(SecurityHeadersMiddleware)
    app.include_router(simulations.router)
    app.include_router(trajectories.router)
    app.include_router(events.router)
    app.include_router(plots.router)
    app.include_router(compare.router)
    app.include_router(presets.router)
    app.include_router(sweeps.router)
    app.include_router(gradients.router)
    app.include_router(health.router)
    install_docs(app)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        return document_security(document_strictness(_add_component_schemas(_without_item_schemas(base_openapi()))))

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
