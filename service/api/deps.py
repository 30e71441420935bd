"""Dependencies: the settings, the job services and the caller's key id, typed (the template's ``api/deps.py``).

They are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in the thread pool, and
these are attribute lookups, for which a thread hop costs more than the whole rest of a status read
(bench/load.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

from fastapi import Depends, Query, Request

from service.api.access import current_owner
from service.jobs.database import ListFilter
from service.jobs.submission import Simulations, Sweeps
from service.problems import ProblemError
from service.settings import Settings
from service.status import STATUSES

# Enumerations of query parameters as unions of single-value literals (JSON Schema anyOf of consts): generated
# clients then take plain strings for them (an `enum` becomes an Enum class whose `.value` they call).
StatusQuery = Union[tuple(Literal[s] for s in STATUSES)]  # type: ignore[valid-type]  # noqa: UP007
MethodQuery = Literal["gd"] | Literal["sgd"] | Literal["flow"] | Literal["exact"]


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


async def get_list_filter(
    status: Annotated[StatusQuery | None, Query(description="Only those with this status.")] = None,
    name: Annotated[str | None, Query(min_length=1, max_length=200, description="Only those with this name.")] = None,
    tag: Annotated[str | None, Query(min_length=1, max_length=64, description="Only those with this tag.")] = None,
    method: Annotated[MethodQuery | None, Query(description="Only those trained by this method (a sweep: its "
                                                            "base's).")] = None,
    created_after: Annotated[datetime | None, Query(description="Only those created after this time (ISO 8601; "
                                                                "UTC when no zone is given), e.g. 2026-12-06 or "
                                                                "2026-12-06T10:30:00Z.")] = None,
) -> ListFilter:
    """What a list route keeps, from its query parameters."""
    after = None
    if created_after is not None:
        moment = created_after if created_after.tzinfo else created_after.replace(tzinfo=UTC)
        after = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the store's timestamp format
    return ListFilter(status=status, name=name, tag=tag, method=method, created_after=after)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ListFilterDep = Annotated[ListFilter, Depends(get_list_filter)]
SimulationsDep = Annotated[Simulations, Depends(get_simulations)]
SweepsDep = Annotated[Sweeps, Depends(get_sweeps)]
OwnerDep = Annotated[str | None, Depends(get_owner)]
