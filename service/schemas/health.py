"""GET /healthz, /readyz and /v1/service-info."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .common import Provenance


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    store: bool
    worker: bool
    workers: int = Field(description="Workers connected to the cluster.")
    workers_warm: int = Field(description="Workers that have compiled the GD kernels (all of them when ready).")


class ServiceInfo(BaseModel):
    """The service: its version and what its API process runs with, the workers it has, and its limits."""

    version: str = Field(description="dlnsim's version.")
    provenance: Provenance = Field(description="The API process's software and BLAS (a run's own provenance is its "
                                               "worker's: GET /v1/simulations/{id}).")
    workers: int = Field(description="Workers connected to the cluster (0 when it does not answer).")
    workers_warm: int = Field(description="Of those, the ones that have compiled the GD kernels.")
    limits: dict[str, int] = Field(description="The size limits a request is checked against (DLNSIM_MAX_*).")
    cite: str = Field(description="How to cite dlnsim (CITATION.cff at the repository's root).")
