"""The JSON documents of the resources (schemas in ``service.schemas``), composed from stored rows: the stored
request bytes are spliced in, not parsed and encoded again (a Simulation carries its request, which can be large).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from service.dynamics.network import VectorField
from service.jobs.store import JobRow
from service.jobs.sweeps_store import PointRow, SweepRow
from service.problems import field_error
from service.schemas.sweeps import SUMMARY_FIELDS
from service.status import CANCELLED, FAILED, POINT_FINISHED, SUCCEEDED


def _simulation_links(job_id: str) -> dict[str, str]:
    return {"self": f"/v1/simulations/{job_id}", "trajectory": f"/v1/simulations/{job_id}/trajectory"}


def normalize_error(error: dict | None, job_id: str) -> dict | None:
    """A stored problem as the ProblemDetails schema promises (the worker may omit optional members)."""
    if error is None:
        return None
    out = dict(error)
    out.setdefault("type", "/problems/internal")
    out.setdefault("title", "Simulation failed")
    out.setdefault("status", 500)
    out.setdefault("detail", out["title"])
    if out.get("instance") is None:
        out["instance"] = f"/v1/simulations/{job_id}"
    errors = []
    for e in out.get("errors") or []:
        entry = field_error(list(e.get("field") or []), str(e.get("code", "invalid")), str(e.get("message", "")),
                            str(e.get("fix") or "see the message"), str(e.get("in", "body")))
        errors.append(entry)
    out["errors"] = errors
    return out


def simulation_json(row: JobRow) -> bytes:
    """The Simulation resource as JSON bytes; the stored request bytes are spliced in, not re-encoded."""
    envelope = orjson.dumps({
        "id": row.id,
        "status": row.status,
        "progress": float(row.progress),
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "error": normalize_error(row.error, row.id),
        "outcome": row.outcome,
        "name": row.name,
        "tags": list(row.tags),
        "provenance": row.provenance,
        "links": _simulation_links(row.id),
    })
    return b'{"request":' + bytes(row.request) + b"," + envelope[1:]


def list_json(items: list[bytes], next_page_token: str | None) -> bytes:
    """``{"items": [...], "next_page_token": ...}`` from documents already encoded."""
    return b'{"items":[' + b",".join(items) + b'],"next_page_token":' + orjson.dumps(next_page_token) + b"}"


def _sweep_links(sweep_id: str) -> dict[str, str]:
    return {"self": f"/v1/sweeps/{sweep_id}", "results": f"/v1/sweeps/{sweep_id}/results"}


def _sweep_progress(row: SweepRow, running: float) -> float:
    if row.status in POINT_FINISHED:  # a finished sweep (succeeded, or failed: every point done)
        return 1.0
    c = row.counts
    done = c[SUCCEEDED] + c[FAILED]
    if row.status == CANCELLED:
        return done / row.n_points
    return min((done + running) / row.n_points, 1.0)


def _sweep_error(row: SweepRow, first_failed: PointRow | None) -> dict | None:
    if row.status != FAILED or first_failed is None:
        return None
    failed = row.counts[FAILED]
    problem = normalize_error(first_failed.error or {}, row.id) or {}
    reason = problem.get("detail") or problem.get("title") or "see its error"
    return {**problem,
            "detail": f"{failed} of {row.n_points} points failed (GET /v1/sweeps/{row.id}/results?status=failed); "
                      f"point {first_failed.k}: {reason}",
            "instance": f"/v1/sweeps/{row.id}"}


def sweep_json(row: SweepRow, running: float = 0.0, first_failed: PointRow | None = None) -> bytes:
    """The Sweep resource as JSON bytes; the stored request bytes are spliced in, not re-encoded."""
    envelope = orjson.dumps({
        "id": row.id,
        "status": row.status,
        "progress": _sweep_progress(row, running),
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "size": row.n_points,
        "counts": row.counts,
        "keep": row.keep,
        "error": _sweep_error(row, first_failed),
        "name": row.name,
        "tags": list(row.tags),
        "provenance": row.provenance,
        "links": _sweep_links(row.id),
    })
    return b'{"request":' + bytes(row.request) + b"," + envelope[1:]


def point_document(row: PointRow, keep: str) -> dict[str, Any]:
    summary = row.summary or {}
    error = None
    if row.error is not None:
        error = normalize_error({**row.error, "instance": row.error.get("instance")
                                  or f"/v1/sweeps/{row.sweep_id}/results"}, row.sweep_id)
    trajectory = None
    if keep == "trajectories" and row.has_trajectory:
        trajectory = f"/v1/sweeps/{row.sweep_id}/points/{row.k}/trajectory"
    return {
        "index": row.k,
        "parameters": orjson.Fragment(row.params),
        "status": row.status,
        "finished_at": row.finished_at,
        "outcome": row.outcome,
        **{name: summary.get(name) for name in SUMMARY_FIELDS},
        "error": error,
        "links": {"trajectory": trajectory},
    }


def point_values(row: PointRow, keep: str) -> dict[str, Any]:
    """``point_document`` with its parameters decoded (for the flat table, ``service.results_table``)."""
    return {**point_document(row, keep), "parameters": orjson.loads(row.params)}


def _finite_lists(a: np.ndarray) -> list:
    """Nested lists of Python floats, None where not finite (exact: tolist keeps every float64's bits)."""
    a = np.asarray(a, dtype=np.float64)
    if np.isfinite(a).all():
        return a.tolist()
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


def gradients_document(field: VectorField) -> dict[str, Any]:
    """The Gradients document (schema: service.schemas.Gradients); NaN/±Inf as null."""
    def number(x: Any) -> float | None:
        return None if x is None or not math.isfinite(x) else float(x)

    return {"loss": number(field.loss), "loss_without_sigma33": number(field.loss_without_sigma33),
            "objective": number(field.objective),
            "gradients": [_finite_lists(g) for g in field.gradients],
            "gradient_norm": number(field.gradient_norm)}
