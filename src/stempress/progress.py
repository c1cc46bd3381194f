"""The one progress shape of the API: ``progress(done, total)``, called from any thread as work completes.

Why so plain: a notebook, a log line and the CLI's Rich bar (``cli.ProgressReporter``) all take two numbers; the
engine reports raw bytes of the source consumed, so every command's bar moves the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Progress = Callable[[int, int], None]


class ProgressCounter:
    """Sums the amounts finished pieces of work report and passes the running total on; thread-safe."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback, self.total, self.done = callback, int(total), 0
        self._lock = threading.Lock()

    def add(self, amount: int) -> None:
        if self.callback is None:
            return
        with self._lock:
            self.done += int(amount)
            self.callback(self.done, self.total)


class PartsProgress:
    """Progress of partitions that report from where they run (``update(part, done)``: bytes done in partition
    ``part`` so far) into a ``ProgressCounter``. A partition counts the most it ever reported, so a partition run
    twice (its worker lost, Dask recomputing it) or a late message never moves the bar back or past the total."""

    def __init__(self, counter: ProgressCounter) -> None:
        self.counter = counter
        self.done: dict[int, int] = {}
        self._lock = threading.Lock()

    def update(self, part: int, done: int) -> None:
        with self._lock:
            gained = int(done) - self.done.get(part, 0)
            if gained <= 0:
                return
            self.done[part] = int(done)
        self.counter.add(gained)
