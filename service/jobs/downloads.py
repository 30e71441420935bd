"""What downloads may hold in the API's memory at once (issue 19.3).

    budget = DownloadBudget(settings.download_memory_bytes, settings.download_wait_seconds)
    need = download_bytes(stored, names, whole=False)      # from the stored header, before any array is read
    reservation = await budget.reserve(need)               # waits for room; 503 with Retry-After after the wait
    ... stream ...
    reservation.release()                                  # from any thread, once the response is done or dropped

A streamed representation (JSON, .npz) holds one decoded array at a time (``codec``: decoded in place, written and
printed a slice at a time), so a download needs about its largest array, twice when ``every`` thins it, plus its
pieces; one built whole (netCDF) needs its arrays, their converted copies and the file: four times their sum. Every
download reserves that from one budget, DLNSIM_DOWNLOAD_MEMORY_BYTES, before its first byte: concurrent downloads
wait for each other instead of adding up (4 downloads of the largest trajectory took the API from 1.1 to 3.7 GB), and
one that could never fit is refused (422, asking for fewer fields, ``every`` or a streamed representation).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from service.problems import ProblemError, field_error

# Pieces printed or written, and their copies, on top of the arrays.
PIECES_BYTES = 48 << 20


def download_bytes(stored: Any, names: Iterable[str], *, whole: bool, thinned: bool = False) -> int:
    """The most a download of the arrays ``names`` of ``stored`` holds at once (module docstring)."""
    if hasattr(stored, "nbytes"):
        sizes = [int(stored.nbytes(name)) for name in names]
    else:  # arrays in memory (a running simulation's records so far)
        sizes = [int(getattr(stored.get(name), "nbytes", 0)) for name in names]
    if whole:
        return 4 * sum(sizes) + PIECES_BYTES
    return (2 if thinned else 1) * max(sizes, default=0) + PIECES_BYTES


class Reservation:
    """Bytes held from the budget until ``release`` (idempotent, callable from any thread)."""

    def __init__(self, budget: DownloadBudget, nbytes: int) -> None:
        self._budget, self.nbytes, self._released = budget, nbytes, False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._budget._give_back(self.nbytes)


class DownloadBudget:
    """One budget of bytes shared by every download (module docstring)."""

    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit, self.wait_seconds = int(limit), float(wait_seconds)
        self.held = 0
        self.peak = 0  # the most held at once (tests, bench/attacks.py)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    async def reserve(self, nbytes: int, *, what: str = "this trajectory") -> Reservation:
        if nbytes > self.limit:
            raise ProblemError(
                422, "limit-exceeded", f"sending {what} as asked would hold about {nbytes >> 20} MiB of the API's "
                f"memory, above this service's download budget of {self.limit >> 20} MiB "
                "(DLNSIM_DOWNLOAD_MEMORY_BYTES)",
                errors=[field_error(["fields"], "limit_exceeded", f"the download needs {nbytes} bytes at once",
                                    "ask for fewer fields, thin the records with every=k, or use the streamed "
                                    "representations (JSON or .npz) instead of netCDF", "query")])
        loop = asyncio.get_running_loop()
        if self._changed is None or self._loop is not loop:
            self._loop, self._changed = loop, asyncio.Event()
        deadline = loop.time() + self.wait_seconds
        while True:
            with self._lock:
                if self.held + nbytes <= self.limit:
                    self.held += nbytes
                    self.peak = max(self.peak, self.held)
                    return Reservation(self, nbytes)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ProblemError(
                    503, "unavailable", f"the service is sending other large trajectories: their "
                    f"{self.held >> 20} MiB of its {self.limit >> 20} MiB download budget "
                    "(DLNSIM_DOWNLOAD_MEMORY_BYTES) leave no room for this one now; retry after the Retry-After delay",
                    headers={"Retry-After": "5"})
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self.held -= nbytes
        loop, changed = self._loop, self._changed
        if loop is not None and changed is not None and not loop.is_closed():
            try:
                if _running(loop):
                    changed.set()
                else:  # the streaming thread, or the collector finalising a dropped response
                    loop.call_soon_threadsafe(changed.set)
            except RuntimeError:  # the loop closed meanwhile
                pass


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
