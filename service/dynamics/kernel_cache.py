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

    kernel_cache.stale_with(globals(), gd_loop)   # at the end of a module whose kernels call into gd_loop

numba takes a cached kernel as fresh while its own source file is unchanged (the index's stamp: a hash of that one
file), yet the machine code it keeps also holds what the kernel calls from other modules (linked in, often
inlined) and the constants it reads from them, frozen at compile time. So an edit to gd_loop.py (``gd_chunk``, or
``CHECK_EVERY``) left gd_lanes.py's cached kernel running the old code. ``stale_with`` puts the other modules'
sources into the stamp of every cached kernel of a module; tests/dynamics/test_kernel_cache.py checks that every
cached kernel's stamp covers every module it is compiled from.
"""

from __future__ import annotations

import hashlib
import os
from types import ModuleType

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


# module name → the source files its cached kernels' stamps cover (its own first), for ``sources``
_SOURCES: dict[str, tuple[str, ...]] = {}


def sources(module: str) -> tuple[str, ...]:
    """The source files whose edits make the cached kernels of ``module`` stale: its own, and what
    ``stale_with`` added (with the modules those depend on in turn)."""
    import sys

    return _SOURCES.get(module, (os.path.realpath(sys.modules[module].__file__),))


def _digest(path: str) -> bytes:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()


def stale_with(namespace: dict, *modules: ModuleType) -> None:
    """Make every disk-cached kernel defined in ``namespace`` (a module's ``globals()``, after its last kernel) stale
    when the source of one of ``modules``, or of a module they were made stale with, changes (module docstring).

    The stamp numba compares becomes (its own stamp, sha256 of each other source): read when the kernel is first
    loaded or saved, so this must run before a kernel is called."""
    from numba.core.dispatcher import Dispatcher

    name = namespace["__name__"]
    files = [os.path.realpath(namespace["__file__"])]
    for module in modules:
        files += [f for f in sources(module.__name__) if f not in files]
    _SOURCES[name] = tuple(files)
    extra = tuple(_digest(f) for f in files[1:])
    for value in list(namespace.values()):
        cache_file = getattr(getattr(value, "_cache", None), "_cache_file", None)  # None: not cached (CACHE off)
        if isinstance(value, Dispatcher) and value.py_func.__module__ == name and cache_file is not None:
            cache_file._source_stamp = (cache_file._source_stamp, extra)
