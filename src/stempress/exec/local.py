"""Executors inside this process: inline (no pool: debugging, one core) and threads (the codecs, numpy and
HDF5 reads release the GIL, so threads use every core without copying blocks between processes)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from stempress.cores import resolve_workers
from stempress.exec.base import Executor

R = TypeVar("R")


class InlineExecutor(Executor):
    """Runs each task when submitted, in the caller's thread."""

    name = "inline"

    def __init__(self, workers: int | None = 1) -> None:
        self.workers = 1

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        future: Future[R] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller through the future, as a pool would
            future.set_exception(exc)
        return future


class ThreadExecutor(Executor):
    """A thread pool started on first use and shut down by ``close``."""

    name = "threads"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = resolve_workers(workers)
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="stempress")
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
