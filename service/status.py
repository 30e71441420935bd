"""One vocabulary for where a simulation, a sweep or a sweep point is in its life, with named subsets.

    queued ──► running ──► succeeded | failed | cancelled        (queued ──► cancelled too)

``ACTIVE`` states may still change; ``TERMINAL`` ones never do. The store's SQL (its CHECK constraints and every
``status IN (…)`` filter) is written from these tuples (``sql_in``), the HTTP schemas take ``Status``.
"""

from __future__ import annotations

from typing import Literal, get_args

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = get_args(Status)
STATUSES: tuple[Status, ...] = get_args(Status)
ACTIVE: tuple[Status, ...] = (QUEUED, RUNNING)
TERMINAL: tuple[Status, ...] = (SUCCEEDED, FAILED, CANCELLED)
# What a finished sweep point can be recorded as (a cancelled point is the sweep's doing, not its run's).
POINT_FINISHED: tuple[Status, ...] = (SUCCEEDED, FAILED)


def sql_in(statuses: tuple[str, ...]) -> str:
    """('queued', 'running'): the SQL list of ``statuses``, for ``status IN …`` and CHECK constraints."""
    return "(" + ",".join(f"'{s}'" for s in statuses) + ")"
