"""Worker processes, for pure-Python work that holds the GIL (the entropy coder's model fitting, Python
reducers). Started with ``forkserver``: forking a process that runs HDF5 or BLAS threads can deadlock."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from stempress.cores import resolve_workers
from stempress.exec.base import Executor

R = TypeVar("R")


class ProcessExecutor(Executor):
    """A process pool started on first use; functions and arguments must pickle (``remote``)."""

    name = "processes"
    remote = True

    def __init__(self, workers: int | None = None) -> None:
        self.workers = resolve_workers(workers)
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        if self._pool is None:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=multiprocessing.get_context(method))
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
