"""Worker processes, for pure-Python work that holds the GIL (the entropy coder: constriction holds it, Python
reducers): the one process pool of stempress.

Why it is built this way (timings: one-off observations on the 2-core development machine;
``benchmarks/event_codec.py`` prints the pool's start-up and the entropy coder's speeds through it):

* Started with ``forkserver`` (``spawn`` where there is none): forking a process that runs HDF5 or BLAS threads can
  deadlock, while the fork server is a fresh process that imports stempress once (``PRELOAD``), so the first pool
  starts in ~0.4 s and a later one in ~0.03 s (``spawn``: ~0.45 s every time, each worker importing stempress).
  As with any ``spawn``/``forkserver`` pool, workers import the main module: a script keeps its work under
  ``if __name__ == "__main__":``.
* Every worker is set up once, when it starts (``setup_worker``): it ignores Ctrl-C (the caller handles it and
  cancels what is queued), exits when the caller dies (even by SIGKILL), and keeps freed memory on its heap
  (``keep_heap``). A caller's own ``initializer`` runs after that, once per worker.
* A worker that dies (out of memory, killed) breaks the pool: the task's future raises ``BrokenProcessPool`` and
  the next ``submit`` starts a fresh pool, so one death does not end the executor.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from stempress.cores import child_context, resolve_workers
from stempress.exec.base import Executor

R = TypeVar("R")

#: Modules the fork server imports once, so workers fork with them loaded (``__main__`` is the default; the
#: entropy coder is the work that most needs processes).
PRELOAD = ("__main__", "stempress.data.entropy")
#: A worker's malloc: allocations below this come from the heap (glibc's ceiling for it: 32 MiB on 64 bits) ...
MMAP_THRESHOLD = 32 * 1024**2
#: ... and free heap above this is given back to the kernel (see ``keep_heap``).
TRIM_THRESHOLD = 64 * 1024**2
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


class ProcessExecutor(Executor):
    """A process pool started on first use; functions and arguments must pickle (``remote``). ``initializer``
    (picklable, no arguments) runs once in each worker after ``setup_worker``."""

    name = "processes"
    remote = True

    def __init__(self, workers: int | None = None, initializer: Callable[[], None] | None = None,
                 preload: Sequence[str] = PRELOAD) -> None:
        self.workers = resolve_workers(workers)
        self.initializer, self.preload = initializer, list(preload)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _live_pool(self) -> ProcessPoolExecutor:
        """The pool, started now if there is none or a dead worker broke the last one."""
        with self._lock:
            pool = self._pool
            if pool is None or getattr(pool, "_broken", False):
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)  # its workers are already gone
                ctx = child_context(self.preload)
                pool = self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx,
                                                        initializer=setup_worker, initargs=(self.initializer,))
            return pool

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        return self._live_pool().submit(fn, *args)

    def start(self) -> int:
        """Start every worker now and wait until each has run a task (a benchmark calls this so its timings leave
        out the one-off start); the worker count."""
        pool, seen = self._live_pool(), set()
        for _ in range(100):  # a task lasts 20 ms, so one quick worker cannot take them all while another starts
            seen |= {f.result() for f in [pool.submit(_pid_after, 0.02) for _ in range(self.workers)]}
            if len(seen) >= self.workers:
                break
        return self.workers

    @contextlib.contextmanager
    def progress_link(self, report: Callable[[int, int], None]) -> Iterator[Callable[[int, int], None] | None]:
        """Progress from inside tasks: each worker sends ``(part, done)`` over its own local socket to a thread
        here, which calls ``report`` (thread-safe) until the context closes, after delivering what finished tasks
        sent (``exec.report_back``)."""
        from stempress.exec.report_back import ProgressListener

        listener = ProgressListener(report)
        try:
            yield listener.link
        finally:
            listener.close()

    def pids(self) -> list[int]:
        """The worker processes' ids (none before the first task or after ``close``)."""
        pool = self._pool
        return list(getattr(pool, "_processes", None) or {}) if pool is not None else []

    def close(self) -> None:
        """Stop the workers (waits for running tasks, drops queued ones); a later ``submit`` starts a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def local_processes(workers: int | None, given: Executor | None = None) -> Iterator[ProcessExecutor | None]:
    """Worker processes on this machine for GIL-bound work such as the entropy coder: ``given`` when it is a
    ``ProcessExecutor`` (the caller's: left open), else ``workers`` of our own (closed on exit), or None for one
    worker (work in this process: no pool to start)."""
    if isinstance(given, ProcessExecutor):
        yield given if given.workers > 1 else None
        return
    n = resolve_workers(workers)
    if n < 2:
        yield None
        return
    with ProcessExecutor(n) as pool:
        yield pool


# --- in each worker ---------------------------------------------------------------------------------------------------

def setup_worker(initializer: Callable[[], None] | None = None) -> None:
    """Ctrl-C is the caller's to handle; when the caller dies (even by SIGKILL) the worker leaves too; freed
    memory stays on the heap. Then the caller's ``initializer``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_heap()
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True, name="stempress-orphan").start()
    if initializer is not None:
        initializer()


def keep_heap() -> None:
    """Keep freed temporaries on the heap. glibc's default gives a task's big temporaries back to the kernel
    between tasks, and an entropy-code worker then spent ~20 % of its time faulting ~2000 fresh pages per 4 MiB
    chunk back in (measured; coding in one long loop does not). Only the worker's own allocator changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: leave its allocator alone
        return
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)
