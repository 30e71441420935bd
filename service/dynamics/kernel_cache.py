"""numba's on-disk kernel cache made safe for several processes compiling at once.

    from . import kernel_cache
    kernel_cache.install()     # before any ``@njit(cache=True)`` function compiles (idempotent)

numba keeps one index per function (``__pycache__/<file>.<function>-<line>.py311.nbi``, signature → data file
name) beside numbered data files (``….1.nbc``, ``….2.nbc``). Saving a new signature reads the index, takes the first
free number, writes the index, then the data file, with nothing held between the read and the writes. Two
processes that compile two signatures of one function at the same time (the parallel warm-up,
``python -m service.jobs.warmup``; two Dask workers compiling on a cold cache) can both take number 1: the index
then says "signature B → 1" while file 1 holds signature A's machine code, and the next process that loads B
calls A's code with B's arguments. ``install`` wraps numba's save in an exclusive lock (``fcntl.flock`` on a lock
file in the cache directory), so each save reads and writes the index alone; loads need no lock (index and data
files are each replaced atomically, and a data file named in the index but not written yet loads as a miss).

numba is pinned to a minor version (pyproject.toml); ``IndexDataCacheFile.save`` is what 0.68 calls. Without
``fcntl`` (Windows) nothing is installed: one process compiling at a time stays safe there.
"""

from __future__ import annotations

import os

LOCK_NAME = "dlnsim-numba-cache.lock"


def install() -> bool:
    """Wrap numba's cache save in a per-directory file lock; True if the lock is (now or already) in place."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    from numba.core.caching import IndexDataCacheFile

    if getattr(IndexDataCacheFile.save, "dlnsim_locked", False):
        return True
    unlocked = IndexDataCacheFile.save

    def save(self, key, data):
        os.makedirs(self._cache_path, exist_ok=True)
        with open(os.path.join(self._cache_path, LOCK_NAME), "ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            unlocked(self, key, data)

    save.dlnsim_locked = True
    save.__doc__ = unlocked.__doc__
    IndexDataCacheFile.save = save
    return True
