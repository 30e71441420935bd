"""The API process's allocator: memory a request frees goes back to the system (issue 19.3).

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which blocks of a few
MiB — a download's pieces, a blob's reads, a request's parse — come from per-thread arenas that keep what is freed:
with tens of threads (the thread pool that reads and encodes trajectories) the API's resident memory grew by hundreds
of MB above what any request held, and never shrank. A fixed threshold keeps blocks of 1 MiB and more in their own
mappings, returned to the system as soon as they are freed, and fewer arenas bound what small blocks can strand.
The workers keep glibc's defaults: they hold long-lived arrays, where mappings cost page faults
(service/jobs/cluster.py worker_environment).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("dlnsim.memory")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20
ARENA_MAX = 4


def bound_allocator() -> bool:
    """Set the thresholds above on glibc (a no-op elsewhere); whether they were set."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, 4 * MMAP_THRESHOLD_BYTES), (M_ARENA_MAX, ARENA_MAX)))
    if not ok:
        log.warning("could not set the allocator's thresholds: freed memory may stay with the API process")
    return ok
