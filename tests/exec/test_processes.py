"""ProcessExecutor, the one process pool: its workers' setup, a caller's initializer, a dead worker replaced."""

from __future__ import annotations

import functools
import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest

from stempress.exec.processes import ProcessExecutor, local_processes


def test_every_worker_ignores_ctrl_c_and_runs_the_callers_initializer() -> None:
    ignore_usr1 = functools.partial(signal.signal, signal.SIGUSR1, signal.SIG_IGN)
    with ProcessExecutor(2, initializer=ignore_usr1) as executor:
        assert executor.start() == 2 and len(executor.pids()) == 2
        for _ in range(4):  # whichever worker takes it
            assert executor.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
            assert executor.submit(signal.getsignal, signal.SIGUSR1).result() == signal.SIG_IGN
        assert os.getpid() not in executor.pids()
    assert executor.pids() == []


def test_a_dead_worker_breaks_its_tasks_and_the_next_submit_gets_a_fresh_pool() -> None:
    with ProcessExecutor(2) as executor:
        with pytest.raises(BrokenProcessPool):
            executor.submit(os._exit, 1).result()
        assert executor.submit(abs, -3).result() == 3
        assert list(executor.map_ordered(abs, [-1, -2, -3])) == [1, 2, 3]


def test_local_processes_keeps_the_callers_pool_and_closes_its_own() -> None:
    with ProcessExecutor(2) as given:
        with local_processes(None, given) as pool:
            assert pool is given
        assert given.submit(abs, -1).result() == 1  # still open
    with local_processes(1) as pool:
        assert pool is None  # one worker: the work stays in this process
    with local_processes(2) as pool:
        assert pool is not None and pool.submit(abs, -2).result() == 2
    assert pool.pids() == []
