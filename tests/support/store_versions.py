"""Store files as an earlier release wrote them, for the schema-upgrade tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from service.jobs.database import MIGRATIONS


def write_store_at_version(path: Path, version: int, *rows: str) -> None:
    """A SQLite store with migrations 1 … ``version`` applied and schema_version = ``version``, then the
    INSERT statements ``rows``: what that release left on disk."""
    with sqlite3.connect(path) as conn:
        for script in MIGRATIONS[:version]:
            conn.executescript(script)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        for sql in rows:
            conn.execute(sql)
