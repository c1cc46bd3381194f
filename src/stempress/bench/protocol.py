"""The timing protocol's machinery: what is timed, the page cache, peak memory and the time limit.

``warm`` is the study's protocol (writes land in the page cache, reads come from it). ``cold`` makes the
write durable (fsync inside the timed write) and evicts the file from the page cache before the read, and
records whether eviction really happened, because on some filesystems it silently does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

Protocol = Literal["warm", "cold"]
PROTOCOLS: tuple[Protocol, ...] = ("warm", "cold")

T = TypeVar("T")


def clock() -> float:
    """The stopwatch's time source, in seconds (a module function, so a test can drive it)."""
    return time.perf_counter()


class TimeLimitExceeded(Exception):
    """A measurement ran past its time limit; the grid records it as skipped and moves on."""

    def __init__(self, limit_s: float, phase: str, fraction_done: float) -> None:
        super().__init__(f"{phase} exceeded the {limit_s:g} s time limit after {fraction_done:.0%} of the data")
        self.limit_s = limit_s
        self.phase = phase
        self.fraction_done = fraction_done


class Stopwatch:
    """Times a phase while leaving out the time spent producing its input (source reads, checksums).

    The deadline is checked between blocks, so a slow codec overruns the limit by at most one block.
    """

    def __init__(self, phase: str, limit_s: float | None, total_rows: int) -> None:
        self.phase = phase
        self.limit_s = limit_s
        self.total_rows = max(1, total_rows)
        self.excluded_s = 0.0
        self.started = 0.0
        self.stopped = 0.0

    def __enter__(self) -> Stopwatch:
        self.started = clock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped = clock()

    @property
    def seconds(self) -> float:
        """Timed seconds: wall time minus excluded time."""
        end = self.stopped or clock()
        return end - self.started - self.excluded_s

    def check(self, rows_done: int) -> None:
        if self.limit_s is not None and self.seconds > self.limit_s:
            raise TimeLimitExceeded(self.limit_s, self.phase, rows_done / self.total_rows)

    @contextmanager
    def excluding(self) -> Iterator[None]:
        """Leave the enclosed work (verification, checksums) out of the timed seconds."""
        t0 = clock()
        try:
            yield
        finally:
            self.excluded_s += clock() - t0

    def exclude(self, blocks: Iterable[T], rows_of: Callable[[T], int]) -> Iterator[T]:
        """Pass a writer's input through, not counting the time it takes to produce it."""
        iterator = iter(blocks)
        rows_done = 0
        while True:
            self.check(rows_done)
            with self.excluding():
                item = next(iterator, None)
            if item is None:
                return
            rows_done += rows_of(item)
            yield item

    def timed(self, blocks: Iterable[T], rows_of: Callable[[T], int]) -> Iterator[T]:
        """Pass a reader's output through, counting the time it takes to produce it, with the deadline."""
        rows_done = 0
        for item in blocks:
            rows_done += rows_of(item)
            self.check(rows_done)
            yield item


def fsync_path(path: Path) -> None:
    """Force a file's data to the device so the write time includes reaching stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def evict_from_page_cache(path: Path) -> bool | None:
    """Ask the kernel to drop a file's cached pages; True if none stay resident, None if unknowable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    resident = resident_fraction(path)
    return None if resident is None else resident == 0.0


def resident_fraction(path: Path) -> float | None:
    """Fraction of a file's pages in the page cache (mincore); None where mincore is not available."""
    size = path.stat().st_size
    if size == 0:
        return 0.0
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as mapped:
        vec = (ctypes.c_ubyte * pages)()
        view = np.frombuffer(mapped, dtype=np.uint8)  # read-only maps export no ctypes buffer; numpy does
        status = libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
        del view
        if status != 0:
            return None
    return sum(v & 1 for v in vec) / pages


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter for this process, so each measurement gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process since the last reset (VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return None
