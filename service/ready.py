"""The one line ``python -m service`` prints when it is ready, and what it prints while it is not.

    ready: http://127.0.0.1:8000 — docs at /docs

Printed once, when /readyz would answer 200 (the same check, ``health.readiness``, asked in process: polling the
route over HTTP would put a line per poll in the access log). While the service waits longer than
``PROGRESS_SECONDS`` it says what for, every ``PROGRESS_SECONDS`` (e.g. workers compiling on a cold kernel cache).
"""

from __future__ import annotations

import asyncio
import logging
import time

from service.api.health import readiness

log = logging.getLogger("dlnsim.ready")

POLL_SECONDS = 0.25
PROGRESS_SECONDS = 10.0


def ready_line(url: str) -> str:
    return f"ready: {url} — docs at /docs"


async def announce_when_ready(app, url: str, *, poll: float = POLL_SECONDS, progress: float = PROGRESS_SECONDS) -> None:
    """Wait until the app is ready, then print ``ready_line(url)``; meanwhile, every ``progress`` seconds, a line
    saying what it waits for."""
    start = last = time.monotonic()
    while True:
        try:
            waiting, _, _ = await readiness(app)
        except Exception as exc:  # noqa: BLE001 - a probe that fails means not ready yet
            waiting = [f"readiness check failed ({exc})"]
        if not waiting:
            print(ready_line(url), flush=True)
            await _follow_the_rest(app, time.monotonic(), poll=max(poll, 1.0))
            return
        now = time.monotonic()
        if now - last >= progress:
            last = now
            print(f"dlnsim: not ready after {now - start:.0f} s: {'; '.join(waiting)}…", flush=True)
        await asyncio.sleep(poll)


async def _follow_the_rest(app, ready_at: float, *, poll: float) -> None:
    """After the ready line: if the workers still compile the other kernels (float32, momentum and SGD, the
    sharpness; service/jobs/warmup.py), say so once, and once more when they are done."""
    engine = getattr(getattr(app, "state", None), "engine", None)
    if engine is None:
        return
    said = False
    while True:
        try:
            workers, warm = await engine.warm_workers(every_kernel=True)
        except Exception:  # noqa: BLE001 - an engine that cannot tell (or a stand-in): nothing to say
            return
        if workers and warm >= workers:
            if said:
                print(f"dlnsim: every kernel compiled ({time.monotonic() - ready_at:.0f} s after ready)", flush=True)
            return
        if not said and time.monotonic() - ready_at >= 2.0:
            said = True
            print("dlnsim: compiling the other kernels in the background (float32, momentum and SGD, sharpness; "
                  "once per install, about half a minute); a job that needs one sooner compiles it first", flush=True)
        await asyncio.sleep(poll)
