"""Sharing a host's cores among the jobs running on it: a lone job gets every core, n jobs a 1/n share each.

    with CoreLedger.for_this_host().hold() as share:     # a task, for as long as it runs
        Hooks(..., blas_threads=share.threads)           # the core asks between chunks of steps

Every task running on the host (a simulation, a sweep chunk) holds one slot of the host's ledger: an
exclusive ``flock`` on one of the files ``slot-0`` … ``slot-(S−1)`` in the ledger directory. The kernel
drops the lock when the process dies, so a killed worker never keeps its cores. ``threads()`` counts the
held slots (a non-blocking lock attempt on each other slot: held is busy) and returns this task's share of
the C cores: C // n, plus one for the first C mod n holders in slot order, at least one.

Why files and not the scheduler: the decision is per host (the cores a job can use are its machine's), is
made every ~0.2 s by every running job, and must survive a worker's death without anyone cleaning up; a
lock on a local file is a few system calls and dies with its holder. Workers in containers on one host
share cores only if they share the ledger directory (docker-compose.yml mounts one volume on every worker).

Other processes count too: a share never exceeds the cores that the rest of the machine left idle since the
previous check (``OtherLoad``, from /proc/stat less this process's own CPU time), rounded. Why: a 2-thread
OpenBLAS spin-waits at its barriers, so when a process outside the ledger (a notebook, a test run, another
service) holds one of 2 cores, a large GD run on 2 threads is often slower than on one
(docs/performance.md#cores).

Oversubscription: a job that starts while another holds every core takes its one thread at once; the
other gives one back at its next check (within the core's hook interval, 0.2 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

# Slots per host: more than the tasks a host runs at once (one per worker thread); a task that finds none
# free runs on one thread.
SLOTS_PER_CORE = 4
MIN_SLOTS = 16


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity), or DLNSIM_HOST_CORES when set (e.g. a container
    whose CPU quota is below the cores it sees)."""
    if os.environ.get("DLNSIM_HOST_CORES"):
        return max(1, int(os.environ["DLNSIM_HOST_CORES"]))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def ledger_directory() -> Path:
    """DLNSIM_CORES_DIR, else a directory per user in the system's temporary directory."""
    configured = os.environ.get("DLNSIM_CORES_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"dlnsim-cores-{os.getuid()}"


def share_of(cores: int, holders: list[int], mine: int) -> int:
    """Threads for the holder of slot ``mine`` among the held slots ``holders``: C // n, plus one for the
    first C mod n holders in slot order, at least one."""
    n = max(1, len(holders))
    rank = sorted(holders).index(mine) if mine in holders else n - 1
    return max(1, cores // n + (1 if rank < cores % n else 0))


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine so far (/proc/stat; idle and iowait are not busy), or None."""
    try:
        with open("/proc/stat", "rb") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - values[3] - values[4], total


def process_ticks() -> int | None:
    """CPU ticks this process has used so far, all its threads (utime + stime of /proc/self/stat), or None."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


class OtherLoad:
    """Cores kept busy by every process but this one, over the time since the previous ``update`` (smoothed:
    half the new reading, half the previous estimate). None until two readings exist, or without /proc."""

    def __init__(self, cores: int, read_machine=machine_ticks, read_process=process_ticks) -> None:
        self.cores, self.read_machine, self.read_process = cores, read_machine, read_process
        self.previous = self._read()
        self.estimate: float | None = None

    def _read(self) -> tuple[int, int, int] | None:
        machine, own = self.read_machine(), self.read_process()
        return None if machine is None or own is None else (*machine, own)

    def update(self) -> float | None:
        now = self._read()
        if now is None or self.previous is None:
            self.previous = now
            return self.estimate
        busy, total, own = (a - b for a, b in zip(now, self.previous, strict=True))
        if total <= 0:
            return self.estimate
        self.previous = now
        reading = max(0.0, (busy - own) / total * self.cores)
        self.estimate = reading if self.estimate is None else 0.5 * (self.estimate + reading)
        return self.estimate


class CoreShare:
    """A held slot (or none, when every slot was taken); ``threads()`` is this task's share right now."""

    def __init__(self, ledger: CoreLedger, slot: int | None, fd: int | None) -> None:
        self.ledger, self.slot, self._fd = ledger, slot, fd
        self.load = OtherLoad(ledger.cores, *ledger.load_readers) if ledger.load_readers else None

    def threads(self) -> int:
        """The ledger's share, capped by the cores the rest of the machine left idle (rounded), at least 1."""
        if self.slot is None:
            return 1
        share = share_of(self.ledger.cores, self.ledger.held_slots(mine=self.slot), self.slot)
        others = self.load.update() if self.load is not None else None
        if others is not None:
            share = min(share, max(1, round(self.ledger.cores - others)))
        return share

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __enter__(self) -> CoreShare:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class CoreLedger:
    """The slot files of one host (see the module docstring)."""

    def __init__(self, directory: Path, cores: int, slots: int | None = None,
                 load_readers: tuple | None = (machine_ticks, process_ticks)) -> None:
        """``load_readers``: (machine, process) tick readers for ``OtherLoad``; None counts the ledger only."""
        self.directory, self.cores = Path(directory), max(1, int(cores))
        self.load_readers = load_readers
        self.slots = slots or max(MIN_SLOTS, SLOTS_PER_CORE * self.cores)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._probes: dict[int, int] = {}  # slot → an fd of ours for probing it (its own open file description)

    @classmethod
    def for_this_host(cls) -> CoreLedger:
        return cls(ledger_directory(), host_cores())

    def _open(self, slot: int) -> int:
        return os.open(self.directory / f"slot-{slot}", os.O_RDWR | os.O_CREAT, 0o666)

    def hold(self) -> CoreShare:
        """Take the first free slot (none free: a share of one thread)."""
        for slot in range(self.slots):
            fd = self._open(slot)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return CoreShare(self, slot, fd)
        return CoreShare(self, None, None)

    def held_slots(self, mine: int | None = None) -> list[int]:
        """The slots held now, by any process on the host (``mine`` counted without probing)."""
        held = []
        for slot in range(self.slots):
            if slot == mine:
                held.append(slot)
                continue
            fd = self._probes.get(slot)
            if fd is None:
                fd = self._probes[slot] = self._open(slot)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(slot)
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return held

    def close(self) -> None:
        for fd in self._probes.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._probes.clear()
