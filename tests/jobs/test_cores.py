"""Sharing a host's cores among its running jobs (service/jobs/cores.py): a lone job gets every core, n jobs
an equal share, a dead worker's slot is free again, and a task in a worker asks its share between chunks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from service.jobs.cores import CoreLedger, OtherLoad, share_of


@pytest.mark.parametrize(("cores", "holders", "shares"), [
    (2, [0], [2]),
    (2, [0, 1], [1, 1]),
    (3, [0, 5], [2, 1]),           # the remainder goes to the first holders in slot order
    (16, [1, 2, 3], [6, 5, 5]),
    (1, [0, 1, 2], [1, 1, 1]),     # more jobs than cores: one thread each, never zero
])
def test_share_of_the_cores_is_an_equal_split_with_the_remainder_to_the_first_slots(cores, holders, shares):
    assert [share_of(cores, holders, slot) for slot in holders] == shares
    assert sum(shares) == max(cores, len(holders))


def ledger(path, cores, **kw):
    """A ledger that counts its holders only (the machine's other load is tested with fake readers below)."""
    return CoreLedger(path, cores=cores, load_readers=None, **kw)


def test_a_lone_job_gets_every_core(tmp_path):
    with ledger(tmp_path, 4).hold() as share:
        assert share.threads() == 4


def test_jobs_split_the_cores_and_a_finished_jobs_cores_go_back_to_the_others(tmp_path):
    a_ledger, b_ledger = ledger(tmp_path, 2), ledger(tmp_path, 2)  # as two workers
    with a_ledger.hold() as a:
        with b_ledger.hold() as b:
            assert (a.slot, b.slot) == (0, 1)
            assert (a.threads(), b.threads()) == (1, 1)
        assert a.threads() == 2


def test_a_task_that_finds_every_slot_taken_runs_on_one_thread(tmp_path):
    few = ledger(tmp_path, 8, slots=2)
    with few.hold(), few.hold(), few.hold() as third:
        assert (third.slot, third.threads()) == (None, 1)


HOLDER = r"""
import sys, time
from service.jobs.cores import CoreLedger
share = CoreLedger(sys.argv[1], cores=2, load_readers=None).hold()
print(share.slot, flush=True)
time.sleep(120)
"""


def test_a_killed_workers_slot_is_free_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        with ledger(tmp_path, 2).hold() as share:
            assert share.threads() == 1
            os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
            holder.wait(30)
            assert share.threads() == 2
    finally:
        holder.kill()
        holder.wait(30)


def test_fixed_blas_threads_setting_turns_sharing_off(monkeypatch):
    from service.jobs import worker

    monkeypatch.setenv("DLNSIM_BLAS_THREADS", "3")
    with worker.shared_cores() as blas_threads:
        assert blas_threads is None
    monkeypatch.setenv("DLNSIM_BLAS_THREADS", "auto")
    with worker.shared_cores() as blas_threads:
        assert blas_threads() >= 1


class Ticks:
    """Fake /proc readers: the machine's busy and total ticks and this process's ticks, advanced by hand."""

    def __init__(self):
        self.busy = self.total = self.own = 0

    def advance(self, seconds: float, cores: int, busy_cores: float, own_cores: float) -> None:
        self.total += round(100 * seconds * cores)
        self.busy += round(100 * seconds * busy_cores)
        self.own += round(100 * seconds * own_cores)

    def readers(self):
        return (lambda: (self.busy, self.total)), (lambda: self.own)


def test_other_load_is_the_machines_busy_time_less_this_processs_own():
    ticks = Ticks()
    load = OtherLoad(2, *ticks.readers())
    ticks.advance(1.0, cores=2, busy_cores=1.9, own_cores=1.4)  # this process on 1.4 cores, others on 0.5
    assert load.update() == pytest.approx(0.5)
    ticks.advance(1.0, cores=2, busy_cores=1.0, own_cores=1.0)  # others stopped: the estimate halves
    assert load.update() == pytest.approx(0.25)


def test_a_lone_job_leaves_the_cores_another_process_keeps_busy(tmp_path):
    ticks = Ticks()
    with CoreLedger(tmp_path, cores=2, load_readers=ticks.readers()).hold() as share:
        ticks.advance(0.2, cores=2, busy_cores=2.0, own_cores=1.0)  # a process outside the ledger on one core
        assert share.threads() == 1
        for _ in range(4):  # it ends: the estimate decays and the second core comes back
            ticks.advance(0.2, cores=2, busy_cores=1.0, own_cores=1.0)
            last = share.threads()
        assert last == 2
