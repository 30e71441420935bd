"""Trajectories as the API serves and stores them, for tests: a core Trajectory's JSON document, and a document
packed as the worker would store it (``service.codec``)."""

from __future__ import annotations

from typing import Any

import orjson

from service import codec


def trajectory_document(trajectory: Any) -> dict[str, Any]:
    """The Trajectory JSON document of a core Trajectory, as GET …/trajectory serves it (plain lists and numbers)."""
    return orjson.loads(codec.to_json(codec.arrays_of(trajectory), codec.MEMBERS))


def document_arrays(document: dict[str, Any]) -> codec.Arrays:
    """The named arrays of a Trajectory JSON document (what the store keeps of it)."""
    stored = codec.JSONTrajectory(document)
    return {name: stored.get(name) for name in stored.names}


def packed(document: dict[str, Any]) -> bytes:
    """A Trajectory JSON document packed as the worker stores a trajectory."""
    return codec.pack(document_arrays(document))


def stored_arrays(store: Any, job_id: str) -> dict[str, Any] | None:
    """Everything a JobStore holds as ``job_id``'s result, by name (None when it has none)."""
    with store.open_result(job_id) as stored:
        return None if stored is None else {name: stored.get(name) for name in stored.names}


def stored_blob(store: Any, job_id: str) -> bytes | None:
    """The bytes a JobStore holds as ``job_id``'s result (None when it has none)."""
    row = store.db.connection().execute("SELECT data FROM results WHERE job_id = ?", (job_id,)).fetchone()
    return None if row is None else bytes(row[0])
