"""Waiting for a job: polling with back-off (Retry-After honoured), and the optional tqdm progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from dlnsim.errors import ProblemError

FIRST_DELAY = 0.1     # s between the first polls: short jobs end in well under a second
BACKOFF = 1.5
MAX_DELAY = 2.0       # s, unless the service's Retry-After says otherwise
RETRY_STATUSES = (429, 503)


class ProgressBar:
    """A tqdm bar (``tqdm.auto``: a widget in Jupyter) from 0 to 100 %, or nothing without tqdm or when off."""

    def __init__(self, enabled: bool, description: str) -> None:
        self._bar: Any = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=100, desc=description, unit="%",
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, fraction: float, status: str) -> None:
        if self._bar is None:
            return
        self._bar.n = round(100 * min(max(fraction, 0.0), 1.0))
        self._bar.set_postfix_str(status, refresh=False)
        self._bar.refresh()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()


def poll(refresh: Callable[[], float | None], done: Callable[[], bool], timeout: float | None,
         what: str, report: Callable[[], None] = lambda: None) -> None:
    """Call ``refresh`` (which returns the answer's Retry-After, if any) until ``done()``, sleeping 0.1 s at
    first and growing to the Retry-After (else 2 s); a 429 or 503 answer waits its Retry-After and tries
    again. ``report`` runs after every poll. TimeoutError after ``timeout`` s (None: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay, cap = FIRST_DELAY, MAX_DELAY
    while True:
        report()
        if done():
            return
        pause = delay
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what} has not finished after {timeout} s")
            pause = min(pause, remaining)
        time.sleep(pause)
        try:
            retry_after = refresh()
        except ProblemError as exc:
            if exc.status not in RETRY_STATUSES:
                raise
            delay = exc.retry_after if exc.retry_after is not None else 1.0
            continue
        if retry_after is not None and retry_after > 0:
            cap = retry_after
        delay = min(delay * BACKOFF, cap)


def retry_busy(send: Callable[[], Any], timeout: float | None) -> Any:
    """``send()``, again after the Retry-After while the service answers 429 or 503, until ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return send()
        except ProblemError as exc:
            pause = exc.retry_after if exc.retry_after is not None else 1.0
            if exc.status not in RETRY_STATUSES or (deadline is not None and time.monotonic() + pause > deadline):
                raise
            time.sleep(pause)
