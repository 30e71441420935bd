"""GET /healthz and /readyz."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    store: bool
    worker: bool
    workers: int = Field(description="Workers connected to the cluster.")
    workers_warm: int = Field(description="Workers that have compiled the GD kernels (all of them when ready).")
