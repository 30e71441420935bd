"""Faults against a real ``python -m service`` (tests/support/server.py's Server): helpers to find the
embedded cluster's worker processes, check the store's integrity, and fill the data dir's disk.

Filling the disk: the data dir is a 16 MB tmpfs mounted here (CI runs as root in its sandbox), filled
with a file of zeros until ENOSPC. Where mounting is not permitted (or with FAULTS_DISK=pagecap), the
server runs with DLNSIM_STORE_MAX_BYTES (``PRAGMA max_page_count`` on its connections) and a filler table
grows the SQLite file to that cap. Either way the server's writes fail with SQLITE_FULL ("database or
disk is full"), and removing the filler frees the space again. The server keeps 1 MiB free
(DLNSIM_STORE_MIN_FREE_BYTES; the default 16 MiB is the whole disk here).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from service.main import STORE_FILE
from tests.support.server import Server
from tests.support.waiting import wait_until as _wait_until

TERMINAL = {"succeeded", "failed", "cancelled"}
# Waits for things that take seconds when all is well; only reached when something is broken.
PATIENCE = 90.0


def wait_until(predicate, timeout: float = PATIENCE, interval: float = 0.05):
    return _wait_until(predicate, timeout, interval)


def poll(client: httpx.Client, job_id: str, until, timeout: float = PATIENCE) -> dict:
    return wait_until(lambda: (sim := client.get(f"/v1/simulations/{job_id}").json()) and until(sim) and sim,
                      timeout=timeout)


def integrity(data_dir: Path) -> str:
    """``PRAGMA integrity_check`` of the store, opened the way an operator would (sqlite3, read-only)."""
    conn = sqlite3.connect(f"file:{data_dir / STORE_FILE}?mode=ro", uri=True)
    try:
        return ";".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def query(data_dir: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(data_dir / STORE_FILE, timeout=10)
    try:
        with conn:  # commits a write
            return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def dask_workers(server: Server) -> list[psutil.Process]:
    """The embedded LocalCluster's worker processes: the server's children started by multiprocessing's
    spawn (the nannies live in the server process; the other child is multiprocessing's resource tracker)."""
    workers = []
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if any("spawn_main" in part for part in child.cmdline()):
                workers.append(child)
    return workers


# ------------------------------------------------------------------------------------------------
# a disk to fill


class TmpfsDisk:
    """A 16 MB tmpfs as the data dir; fill() writes a filler file until ENOSPC, free() removes it."""

    mode = "tmpfs"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"
        self.server_env: dict[str, str] = {"DLNSIM_STORE_MIN_FREE_BYTES": str(1 << 20)}

    def mount(self) -> bool:
        self.path.mkdir(parents=True, exist_ok=True)
        return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.path)],
                              capture_output=True, check=False).returncode == 0

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for size in (1 << 16, 4096, 1):  # big blocks, then the tail down to the last byte
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * size):
                        pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)


class PageCapDisk:
    """Fallback: the store is capped at MAX_BYTES (DLNSIM_STORE_MAX_BYTES → PRAGMA max_page_count on the
    server's connections); fill() grows it to the cap with a filler table, free() drops the table (its pages
    go to the freelist, where the server's next writes find room)."""

    mode = "sqlite max_page_count (DLNSIM_STORE_MAX_BYTES)"
    MAX_BYTES = 8 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server_env = {"DLNSIM_STORE_MAX_BYTES": str(self.MAX_BYTES), "DLNSIM_STORE_MIN_FREE_BYTES": str(1 << 20)}

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path / STORE_FILE, timeout=10, isolation_level=None)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {self.MAX_BYTES // page_size}")
        return conn

    def fill(self) -> None:
        conn = self._connect()
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS filler (data BLOB)")
            for size in (1 << 20, 1 << 16, 4096, 512, 1):  # big blobs, then smaller ones into what is left
                with contextlib.suppress(sqlite3.OperationalError):  # SQLITE_FULL: this size no longer fits
                    while True:
                        conn.execute("INSERT INTO filler VALUES (zeroblob(?))", (size,))
        finally:
            conn.close()

    def free(self) -> None:
        conn = self._connect()
        try:
            conn.execute("DROP TABLE IF EXISTS filler")
        finally:
            conn.close()

    def close(self) -> None:
        pass


@pytest.fixture
def small_disk(tmp_path) -> Iterator[TmpfsDisk | PageCapDisk]:
    disk = TmpfsDisk(tmp_path / "data")
    # FAULTS_DISK=pagecap forces the fallback (to test it where mounting works).
    if os.environ.get("FAULTS_DISK") == "pagecap" or not disk.mount():
        disk = PageCapDisk(tmp_path / "data")
    try:
        yield disk
    finally:
        disk.close()
