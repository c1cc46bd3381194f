"""The executor interface's ordered map: a failure stops the run only once nothing it started still runs."""

from __future__ import annotations

import threading

import pytest

from stempress.exec import ThreadExecutor


def test_a_failure_is_raised_after_the_tasks_still_running_have_ended() -> None:
    """Else the caller cleans up (removes a staging folder) while a worker still writes into it."""
    slow_started, release = threading.Event(), threading.Event()
    ended: list[int] = []

    def task(i: int) -> int:
        if i == 0:
            slow_started.wait(5)
            raise ValueError("task 0 failed")
        if i == 1:
            slow_started.set()
            release.wait(5)
            ended.append(i)
        return i

    def release_soon() -> None:
        slow_started.wait(5)
        threading.Timer(0.2, release.set).start()

    threading.Thread(target=release_soon).start()
    with ThreadExecutor(2) as pool:
        with pytest.raises(ValueError, match="task 0 failed"):
            list(pool.map_ordered(task, range(6)))
        seen_at_failure = list(ended)  # before the pool closes (which would wait for it anyway)
    assert seen_at_failure == [1]  # task 1 was running when task 0 failed, and had ended before the failure reached us
