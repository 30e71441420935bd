"""Dependencies: the settings, job store and engine the lifespan put on ``app.state``.

They are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in the thread
pool, and these are attribute lookups, for which a thread hop (~0.1 ms of CPU and two context switches
each) cost more than the whole rest of a status read (bench/load.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from service.api.errors import ProblemError
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _state(request: Request, name: str) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise ProblemError(503, "unavailable", "the service is starting or stopping; retry shortly",
                           headers={"Retry-After": "1"})
    return value


async def get_store(request: Request) -> Any:
    """The JobStore (service.jobs.store.JobStore)."""
    return _state(request, "store")


async def get_engine(request: Request) -> Any:
    """The Engine (service.jobs.engine.Engine)."""
    return _state(request, "engine")


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Any, Depends(get_store)]
EngineDep = Annotated[Any, Depends(get_engine)]
