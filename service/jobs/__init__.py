"""Jobs: the SQLite job store (source of truth), the Dask engine, and the task run on workers."""

from .engine import Engine
from .store import CorruptResultError, InvalidPageToken, JobRow, JobStore
from .task import JobCancelled, JobFailed, run_simulation

__all__ = ["CorruptResultError", "Engine", "InvalidPageToken", "JobCancelled", "JobFailed", "JobRow",
           "JobStore", "run_simulation"]
