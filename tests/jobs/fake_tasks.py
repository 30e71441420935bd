"""Stand-in tasks for engine tests: they use the real worker hooks (start_attempt, progress events,
cancel flag) but sleep instead of computing, so the engine's behaviour is tested without CPU load.

The request is JSON {"seconds": float, "fail": bool, "crash": bool}.
"""

from __future__ import annotations

import os
import time

import orjson

from service import codec
from service.jobs.worker import JobCancelled, JobFailed, start_attempt

SLEEP = 0.02


def sleepy_task(job_id: str, request_json: bytes) -> tuple[str, bytes]:
    request = orjson.loads(request_json)
    progress, should_stop = start_attempt(job_id)
    if request.get("fail"):
        raise JobFailed({"type": "/problems/invalid-simulation", "title": "bad", "status": 422,
                         "detail": "asked to fail", "errors": [{"field": ["training", "steps"]}]})
    if request.get("crash"):
        raise ZeroDivisionError("asked to crash")
    seconds = float(request.get("seconds", 0.0))
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        progress(elapsed / seconds)
        if should_stop():
            raise JobCancelled(job_id)
        time.sleep(SLEEP)
    document = {"seconds": seconds, "job": job_id, "pid": os.getpid()}
    return "completed", codec.pack(document)


def dispatch_task(job_id: str, request_json: bytes) -> tuple[str, bytes]:
    """{"fake": {...}} runs sleepy_task on the inner object; anything else is a real simulation."""
    from service.jobs.tasks import run_simulation

    request = orjson.loads(request_json)
    if isinstance(request, dict) and "fake" in request:
        return sleepy_task(job_id, orjson.dumps(request["fake"]))
    return run_simulation(job_id, request_json)
