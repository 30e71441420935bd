"""Sharing a host's cores among its running jobs (service/jobs/cores.py): a lone job gets every core, n jobs
an equal share, a dead worker's slot is free again, and a task in a worker asks its share between chunks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from service.jobs.cores import CoreLedger, share_of


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


def test_a_lone_job_gets_every_core(tmp_path):
    with CoreLedger(tmp_path, cores=4).hold() as share:
        assert share.threads() == 4


def test_jobs_split_the_cores_and_a_finished_jobs_cores_go_back_to_the_others(tmp_path):
    a_ledger, b_ledger = CoreLedger(tmp_path, cores=2), CoreLedger(tmp_path, cores=2)  # as two workers
    with a_ledger.hold() as a:
        with b_ledger.hold() as b:
            assert (a.slot, b.slot) == (0, 1)
            assert (a.threads(), b.threads()) == (1, 1)
        assert a.threads() == 2


def test_a_task_that_finds_every_slot_taken_runs_on_one_thread(tmp_path):
    ledger = CoreLedger(tmp_path, cores=8, slots=2)
    with ledger.hold(), ledger.hold(), ledger.hold() as third:
        assert (third.slot, third.threads()) == (None, 1)


HOLDER = r"""
import sys, time
from service.jobs.cores import CoreLedger
share = CoreLedger(sys.argv[1], cores=2).hold()
print(share.slot, flush=True)
time.sleep(120)
"""


def test_a_killed_workers_slot_is_free_at_once(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        with CoreLedger(tmp_path, cores=2).hold() as share:
            assert share.threads() == 1
            os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
            holder.wait(30)
            assert share.threads() == 2
    finally:
        holder.kill()
        holder.wait(30)


def test_fixed_blas_threads_setting_turns_sharing_off(monkeypatch):
    from service.jobs import task

    monkeypatch.setenv("DLNSIM_BLAS_THREADS", "3")
    with task.shared_cores() as blas_threads:
        assert blas_threads is None
    monkeypatch.setenv("DLNSIM_BLAS_THREADS", "auto")
    with task.shared_cores() as blas_threads:
        assert blas_threads() >= 1
