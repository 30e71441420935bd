"""Jobs: the database (SQLite, the source of truth) and its job and sweep stores, the Dask engines, and the tasks
run on workers."""

from .database import CorruptResultError, Database, InvalidPageToken
from .engine import Engine
from .store import JobRow, JobStore
from .tasks import run_simulation
from .worker import JobCancelled, JobFailed

__all__ = ["CorruptResultError", "Database", "Engine", "InvalidPageToken", "JobCancelled", "JobFailed", "JobRow",
           "JobStore", "run_simulation"]
