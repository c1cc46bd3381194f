"""The receiver's frame ring: shared memory bounded in bytes between the receiving process (``live.pump``), which
decodes frames into it, and the parent, which places them into scan rows and then gives the space back.

Why shared memory: the receive and decode run in a child process (their own GIL), and a frame crossing a pipe would
be pickled and copied twice; here the child writes each frame once, where the parent reads it, and only a few numbers
per batch cross the pipe. Why bounded: when the parent falls behind, the ring fills, the child waits for space and
stops reading, and the protocol's own backpressure (TCP, the ZeroMQ high-water mark) holds the detector back.

The child takes buffers (``RingBuffers.take``; a reader decodes many frames into one) and numbers the events it
sends; the parent stores the number of the last event it has placed (``Ring.placed``). A buffer is free again once
the child no longer refers to it and the parent has placed the last event that used it, so the child alone decides
what is free and never waits on a stale answer. Four int64 counters lead the segment: events placed (written by
the parent), bytes in use, frames pumped and peak bytes in use (written by the child)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import weakref
from multiprocessing import shared_memory

import numpy as np

from stempress.errors import StempressError
from stempress.live.events import Buffers

_PLACED, _USED, _PUMPED, _PEAK = range(4)
HEADER_BYTES = 64
ALIGN = 64
#: The smallest ring: readers take buffers of up to 4 MiB (Merlin's receive buffer, ``merlin.BUFFER_BYTES``); the child
#: holds at most three at once (the one it fills, one whose frames are in flight, a copy), and in a ring of eight
#: such buffers those always leave a gap for the next one, wherever they lie.
MIN_BYTES = 32 * 1024**2
#: How long the child sleeps between looks at ``released`` while the ring is full.
WAIT_S = 0.0005


def ring_bytes(queue_bytes: int, frame_bytes: int, shm: str = "/dev/shm") -> int:
    """The ring's capacity for a byte budget of ``queue_bytes``: at least ``MIN_BYTES`` and 16 frames (a receive
    buffer holds two frames at least), so any buffer a reader takes fits in an eighth of it; no more than the
    shared-memory filesystem has free (a container's is often 64 MB), where the processes would die of SIGBUS when
    the ring filled, or a one-line refusal when even the smallest ring does not fit there."""
    least = max(MIN_BYTES, 16 * int(frame_bytes))
    size = max(int(queue_bytes), least)
    if os.path.isdir(shm):
        free = shutil.disk_usage(shm).free - HEADER_BYTES
        if free < least:
            raise StempressError(f"{shm} has {free / 1e6:,.0f} MB free, the live receiver needs {least / 1e6:,.0f} MB "
                                 "of shared memory; free some (in a container: a larger --shm-size)")
        size = min(size, free)
    return size - size % ALIGN


class Ring:
    """The shared segment: created (and unlinked, ``close``) by the parent, attached by the child by ``name``."""

    def __init__(self, capacity: int | None = None, name: str | None = None) -> None:
        if name is None:
            assert capacity is not None
            self.shm = shared_memory.SharedMemory(create=True, size=HEADER_BYTES + int(capacity))
            self.owner = True
        else:
            self.shm = shared_memory.SharedMemory(name=name)
            self.owner = False
        self.name = self.shm.name
        self.capacity = int(capacity) if capacity is not None else self.shm.size - HEADER_BYTES
        self.counters = np.ndarray(4, np.int64, buffer=self.shm.buf)
        self.bytes_view = np.ndarray(self.capacity, np.uint8, buffer=self.shm.buf, offset=HEADER_BYTES)
        self.base = self.bytes_view.__array_interface__["data"][0]

    # -- both sides ------------------------------------------------------------------------------------------------
    @property
    def used(self) -> int:
        """Bytes in use, as of the last buffer the child took."""
        return int(self.counters[_USED])

    @property
    def pumped(self) -> int:
        """Frames the child has taken off the network."""
        return int(self.counters[_PUMPED])

    @property
    def peak(self) -> int:
        """The most bytes in use at once."""
        return int(self.counters[_PEAK])

    def view(self, offset: int, shape: tuple[int, ...], dtype: np.dtype | str,
             strides: tuple[int, ...] | None = None) -> np.ndarray:
        """The array at ``offset`` (bytes into the ring; its first element) as the child described it."""
        return np.ndarray(shape, np.dtype(dtype), buffer=self.shm.buf, offset=HEADER_BYTES + offset, strides=strides)

    def offset_of(self, array: np.ndarray) -> int | None:
        """Where ``array``'s first element is in the ring, or None when it is elsewhere (heap memory)."""
        at = array.__array_interface__["data"][0] - self.base
        return at if 0 <= at < self.capacity else None

    def count(self, frames: int) -> None:
        """The child took ``frames`` more off the network."""
        self.counters[_PUMPED] += frames

    # -- the parent ------------------------------------------------------------------------------------------------
    def placed(self, event: int) -> None:
        """The parent has placed events up to number ``event``: the buffers they used may be filled again."""
        self.counters[_PLACED] = event

    def close(self) -> None:
        """Unmap (unless an array still refers to the segment: it stays mapped until that goes) and, by the
        parent, unlink: the name goes at once, whatever still maps it."""
        del self.counters, self.bytes_view
        with contextlib.suppress(BufferError):  # a view of it still alive somewhere: the mapping goes with it
            self.shm.close()
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()


class Stopped(Exception):
    """The receiver was asked to stop while waiting for ring space."""


class _Taken:
    """A buffer taken from the ring at ``offset``, free again once ``done`` here (nothing refers to it) and the parent
    has placed event ``last`` (the last one that used it)."""

    __slots__ = ("done", "last", "nbytes", "offset")

    def __init__(self, offset: int, nbytes: int) -> None:
        self.offset, self.nbytes, self.done, self.last = offset, nbytes, False, 0

    def finish(self) -> None:
        self.done = True


class RingBuffers(Buffers):
    """The child's side: buffers taken from the ring, waiting while none fits (until ``stop``). Each event sent is
    numbered (``mark``); the parent counts the events it has placed (``Ring.placed``), and a buffer is free once
    nothing here refers to it any more and the parent has placed the last event that used it.

    A buffer goes at the lowest offset where it fits between the buffers in use (first fit, not a head running
    round the ring): while the parent keeps up, the same few megabytes are used over and over (resident, in cache),
    and a buffer the reader still fills never blocks the rest of the ring behind it (a head that had wrapped
    round behind it would wait for it, and the reader would wait for the head: stuck)."""

    reusable = False  # the parent may still read a buffer the child has let go: never refill one

    def __init__(self, stop: threading.Event) -> None:
        self.ring: Ring | None = None  # until ``attach``: heap buffers (those the reader takes before the first frame)
        self.stop = stop
        self._taken: list[_Taken] = []  # the buffers not yet free, in the order taken

    def attach(self, ring: Ring) -> None:
        self.ring = ring

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        ring = self.ring
        if ring is None:
            return super().take(shape, dtype)
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        taken = self._room(ring, nbytes + (-nbytes % ALIGN))
        array = ring.view(taken.offset, tuple(shape), dtype)
        weakref.finalize(array, taken.finish)  # every view of it keeps it alive (numpy's base)
        return array

    def _room(self, ring: Ring, nbytes: int) -> _Taken:
        """A buffer of ``nbytes`` once it fits somewhere."""
        if nbytes > ring.capacity // 2:
            raise StempressError(f"a receive buffer of {nbytes} bytes does not fit the ring of {ring.capacity} "
                                 "bytes; give a larger --buffer-mb")
        while (at := self._gap(ring, nbytes)) is None:
            if self.stop.is_set():
                raise Stopped
            time.sleep(WAIT_S)
        taken = _Taken(at, nbytes)
        self._taken.append(taken)
        self._count_used(ring)
        return taken

    def _gap(self, ring: Ring, nbytes: int) -> int | None:
        """The lowest offset with ``nbytes`` free after the buffers that are free again have been let go."""
        placed = int(ring.counters[_PLACED])
        self._taken = [t for t in self._taken if not (t.done and t.last <= placed)]
        at = 0
        for offset, end in sorted((t.offset, t.offset + t.nbytes) for t in self._taken):
            if offset - at >= nbytes:
                return at
            at = max(at, end)
        return at if ring.capacity - at >= nbytes else None

    def _count_used(self, ring: Ring) -> None:
        """Bytes in use (as of the last buffer taken: the parent's status line) and the peak."""
        used = sum(t.nbytes for t in self._taken)
        ring.counters[_USED] = used
        ring.counters[_PEAK] = max(int(ring.counters[_PEAK]), used)

    def mark(self, offset: int, event: int) -> None:
        """Event number ``event`` uses the buffer holding ring offset ``offset``."""
        for taken in reversed(self._taken):  # nearly always the newest
            if taken.offset <= offset < taken.offset + taken.nbytes:
                taken.last = event
                return
        raise AssertionError(f"ring offset {offset} is in no buffer taken")
