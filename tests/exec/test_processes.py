"""ProcessExecutor, the one process pool: its workers' setup, a caller's initializer, a dead worker replaced."""

from __future__ import annotations

import functools
import os
import signal
from concurrent.futures.process import BrokenProcessPool

import pytest

from stempress.data.base import Block
from stempress.exec.processes import ProcessExecutor, local_processes
from stempress.sinks.protocol import RunInfo


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


# -- progress from inside the workers' tasks -----------------------------------------------------------------
def _report_steps(item: tuple[object, int]) -> int:
    link, part = item
    for done in (10, 20, 30):
        link(part, done * (part + 1))  # type: ignore[operator]
    return part


def test_reports_from_inside_tasks_reach_the_caller_and_late_ones_never_move_progress_back() -> None:
    from stempress.progress import PartsProgress, ProgressCounter

    got: list[tuple[int, int]] = []
    with ProcessExecutor(2) as executor:
        with executor.progress_link(lambda part, done: got.append((part, done))) as link:
            assert link is not None
            assert list(executor.map_ordered(_report_steps, [(link, part) for part in range(4)])) == [0, 1, 2, 3]
        # every report of a finished task is delivered by the time the link closes, in order per partition
        for part in range(4):
            assert [done for p, done in got if p == part] == [10 * (part + 1), 20 * (part + 1), 30 * (part + 1)]
        with executor.progress_link(lambda part, done: got.append((-part, done))) as again:  # a second run
            executor.submit(_report_steps, (again, 1)).result()
        assert got[-3:] == [(-1, 20), (-1, 40), (-1, 60)]
    seen: list[int] = []
    parts = PartsProgress(ProgressCounter(lambda done, total: seen.append(done), 100))
    for part, done in [(0, 30), (1, 10), (0, 20), (0, 30), (1, 5)]:  # a partition rerun, a message late
        parts.update(part, done)
    assert seen == [30, 40]


class GatedRows:
    """A mergeable sink whose partitions cannot end before the caller has shown some progress: each partition's
    last block waits (in its worker) for the marker file the caller's progress callback writes."""

    name = "gated rows"

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.rows = 0

    def open(self, info: RunInfo) -> None:
        self.stop = info.row_range[1]

    def consume(self, block: Block) -> None:
        if block.stop == self.stop:
            import time

            for _ in range(6000):  # a guard against a hang, not a timing: the caller's mark comes or it fails
                if os.path.exists(self.marker):
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("no progress reached the caller while the partitions ran")
        self.rows += block.data.shape[0]

    def partial(self, rows: tuple[int, int]) -> GatedRows:
        return GatedRows(self.marker)

    def merge(self, other: GatedRows) -> None:
        self.rows += other.rows

    def finish(self) -> int:
        return self.rows


def test_engine_progress_on_worker_processes_moves_inside_partitions(tmp_path) -> None:
    import numpy as np

    from stempress.data.open import open_source
    from stempress.engine import partitions_for, run

    np.save(tmp_path / "cube.npy", np.arange(16 * 4 * 8 * 8, dtype=np.uint16).reshape(16, 4, 8, 8))
    marker = tmp_path / "progress-seen"
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        marker.touch()

    with ProcessExecutor(2) as executor, open_source(tmp_path / "cube.npy") as source:
        ranges = partitions_for(source, executor.workers)
        assert all(stop - start == 2 for start, stop in ranges)  # two one-row blocks per partition
        assert run(source, [GatedRows(str(marker))], executor=executor, rows=1, progress=progress) == [16]
    row, total = 4 * 8 * 8 * 2, 16 * 4 * 8 * 8 * 2
    dones = [done for done, _ in calls]
    # no partition could end before the caller saw progress: the first value is one block of one partition
    assert dones[0] == row and dones == sorted(dones) and dones[-1] == total and {t for _, t in calls} == {total}
    assert len(calls) > len(ranges)


def _raise(error: BaseException) -> None:
    raise error


def test_stempress_errors_raised_in_a_worker_come_back_whole_and_the_pool_stays_up() -> None:
    """An exception that cannot be unpickled breaks the whole pool (BrokenProcessPool), hiding the real error."""
    from stempress.data.event_checksums import ChecksumError
    from stempress.sinks.reference import CheckFailed, Problem

    problem = Problem("differs", "pixel (1, 2) differs", (3, 4), (0, 1))
    with ProcessExecutor(2) as executor:
        with pytest.raises(CheckFailed) as failed:
            executor.submit(_raise, CheckFailed(problem)).result()
        assert failed.value.problem == problem and str(failed.value).startswith("scan position (3, 0)")
        with pytest.raises(ChecksumError, match="chunk 7 is bad") as bad:
            executor.submit(_raise, ChecksumError("chunk 7 is bad", 7, (42, 48))).result()
        assert (bad.value.chunk, bad.value.positions) == (7, (42, 48))
        pool = executor._pool
        assert executor.submit(abs, -4).result() == 4 and executor._pool is pool  # not broken: the same pool
