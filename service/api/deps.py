"""Dependencies: the settings, the job services and the caller's key id, typed (the template's ``api/deps.py``).

They are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in the thread pool, and
these are attribute lookups, for which a thread hop costs more than the whole rest of a status read
(bench/load.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from service.api.access import current_owner
from service.jobs.submission import Simulations, Sweeps
from service.problems import ProblemError
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _state(request: Request, name: str) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise ProblemError(503, "unavailable", "the service is starting or stopping; retry shortly",
                           headers={"Retry-After": "1"})
    return value


async def get_simulations(request: Request) -> Simulations:
    return _state(request, "simulations")


async def get_sweeps(request: Request) -> Sweeps:
    return _state(request, "sweeps")


async def get_owner() -> str | None:
    """The calling API key's id (None when keys are off: then every caller sees everything)."""
    return current_owner()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SimulationsDep = Annotated[Simulations, Depends(get_simulations)]
SweepsDep = Annotated[Sweeps, Depends(get_sweeps)]
OwnerDep = Annotated[str | None, Depends(get_owner)]
