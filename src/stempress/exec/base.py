"""The one executor interface: ordered results with bounded work in flight.

Why ordered: sinks merge partial results in a fixed order (bit-identical for any worker count) and the archive
writer stores chunks in grid order. Why bounded: a producer faster than the workers (a page-cached file, a
detector) must wait instead of queueing the whole cube in memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Tasks in flight per worker: one running, one queued so a worker never waits for the producer.
IN_FLIGHT_PER_WORKER = 2


def in_flight_for(workers: int, asked: int | None = None) -> int:
    """The one backpressure rule: at most this many submitted, unfinished tasks."""
    return max(1, int(asked)) if asked is not None else max(1, IN_FLIGHT_PER_WORKER * int(workers))


class Executor(ABC):
    """Runs functions on ``workers`` workers. ``remote``: work crosses a process boundary, so functions and
    their arguments must pickle (sources travel as ``SourceSpec`` s, not open files)."""

    name: str = "executor"
    workers: int = 1
    remote: bool = False

    @abstractmethod
    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        """Start ``fn(*args)``; the result comes back through the future."""

    def map_ordered(self, fn: Callable[[T], R], items: Iterable[T], in_flight: int | None = None) -> Iterator[R]:
        """``fn(item)`` for each item, yielded in input order, with at most ``in_flight`` pending; a failure is
        raised when its turn comes and the tasks not yet started are cancelled."""
        bound = in_flight_for(self.workers, in_flight)
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                while len(pending) >= bound:
                    yield pending.popleft().result()
                pending.append(self.submit(fn, item))
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    def progress_link(self, report: Callable[[int, int], None]
                      ) -> AbstractContextManager[Callable[[int, int], None] | None]:
        """A picklable ``link(part, done)`` for remote tasks to report progress from inside their work, delivered
        here as ``report(part, done)`` while the context is open; None where there is no channel back (a local
        executor's tasks share the caller's counter). Worker processes and Dask workers have one."""
        return nullcontext(None)

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to release
        """Release the workers (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{self.name}({self.workers} workers)"
