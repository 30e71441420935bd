"""The Simulation resource: a job, its status, and the validated request."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.dynamics.methods import Outcome
from service.status import Status

from .common import Provenance
from .problems import ProblemDetails
from .requests import SimulationRequest


class SimulationLinks(BaseModel):
    self: str
    trajectory: str


class Simulation(BaseModel):
    """A simulation job. ``request`` is the validated request (defaults filled in); ``outcome`` and the
    trajectory exist once it succeeded; ``error`` is a problem once it failed."""

    id: str
    status: Status
    progress: float = Field(ge=0, le=1)
    created_at: str = Field(description="UTC, ISO 8601.")
    started_at: str | None = None
    finished_at: str | None = None
    request: SimulationRequest
    error: ProblemDetails | None = None
    outcome: Outcome | None = None
    name: str | None = Field(None, description="The simulation's name, as given.")
    tags: list[str] = Field(default_factory=list, description="The simulation's tags, as given.")
    provenance: Provenance | None = Field(None, description="What it ran with: software versions, BLAS and threads "
                                                            "of the worker that ran it (null until one started), "
                                                            "precision, host cores.")
    links: SimulationLinks


class SimulationList(BaseModel):
    items: list[Simulation]
    next_page_token: str | None = Field(None, description="Pass as page_token for the next page; null on the last.")
