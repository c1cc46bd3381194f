"""``LiveSource``: a detector stream as the engine's streaming source (``data.stream.StreamSource``).

A reader thread takes messages off the network, decodes them and puts them on a queue bounded in bytes (an event
per frame, or one per batch of frames that arrived together: ``events.Frames``, placed a scan row's part at a
time); when the sinks fall behind, the queue fills, the thread stops reading and the protocol's own backpressure
(TCP for Merlin, the ZeroMQ high-water mark for DECTRIS v1 and v2) holds the detector back, so memory stays
bounded.
``blocks()`` assembles whole scan rows (``accounting.RowAssembler``) with ``valid`` marking what arrived. A stall or a
disconnect ends the stream with a one-line reason in ``account.ended``; the rows hold what arrived."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from stempress.data.base import Block, check_shape_dtype
from stempress.errors import StempressError
from stempress.live.accounting import FrameAccount, RowAssembler
from stempress.live.events import Corrupt, End, Event, Frame, Frames

#: Decoded frames held between the network and the sinks.
QUEUE_BYTES = 256 * 1024**2
PROTOCOLS = ("merlin", "dectris", "dectris2")


class ByteQueue:
    """A FIFO bounded in bytes (one item always fits, however large); ``put`` blocks while it is full."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.bytes, self.peak = int(capacity), 0, 0
        self._items: deque[tuple[Event, int]] = deque()
        self._cond = threading.Condition()

    def put(self, item: Event, nbytes: int, stop: threading.Event) -> bool:
        with self._cond:
            while self._items and self.bytes + nbytes > self.capacity:
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
            self._items.append((item, nbytes))
            self.bytes += nbytes
            self.peak = max(self.peak, self.bytes)
            self._cond.notify_all()
            return True

    def get(self, stopped: Callable[[], str | None] = lambda: None) -> Event:
        """The next item, or ``End`` as soon as ``stopped()`` gives a reason (checked every 0.1 s)."""
        with self._cond:
            while not self._items or stopped():
                reason = stopped()
                if reason:
                    return End(reason)
                self._cond.wait(0.1)
            item, nbytes = self._items.popleft()
            self.bytes -= nbytes
            self._cond.notify_all()
            return item


class LiveSource:
    """A scan of ``scan_shape`` positions received from ``url`` (``merlin://HOST:PORT``, ``dectris://HOST:PORT``
    for SIMPLON stream v1 or ``dectris2://HOST:PORT[?channel=NAME]`` for Stream V2). Opening connects and reads
    the stream's header and first frame (so the cube's shape and dtype are known before the sinks open);
    ``blocks()`` may be iterated once."""

    def __init__(self, url: str, scan_shape: tuple[int, int], *, timeout: float = 10.0,
                 queue_bytes: int = QUEUE_BYTES, window_rows: int = 1, fill: int = 0,
                 flip_det_y: bool = True) -> None:
        protocol, host, port = parse_url(url)
        scan_y, scan_x = (int(n) for n in scan_shape)
        if scan_y < 1 or scan_x < 1:
            raise StempressError(f"scan shape {scan_shape} must be positive; give --scan-shape ROWSxCOLUMNS")
        if protocol == "merlin":
            from stempress.live.merlin import MerlinReader

            self.reader: Any = MerlinReader(host, port, timeout=timeout, flip_det_y=flip_det_y)
        elif protocol == "dectris":
            from stempress.live.dectris import DectrisReader

            self.reader = DectrisReader(host, port, timeout=timeout)
        else:
            from stempress.live.dectris2 import Dectris2Reader

            channel = parse_qs(urlparse(url).query).get("channel", [None])[-1]  # dectris2://HOST:PORT?channel=NAME
            self.reader = Dectris2Reader(host, port, timeout=timeout, channel=channel)
        self.url, self.protocol = url, protocol
        try:
            header = self.reader.start()
        except BaseException:
            self.reader.close()
            raise
        self.first_number = header.first_number
        self.dtype = np.dtype(header.dtype)
        self.shape = check_shape_dtype((scan_y, scan_x, *header.det_shape), self.dtype, url)
        self.name = f"{protocol}-{host}-{port}"
        self.account = FrameAccount(scan_y * scan_x)
        self.metadata: dict[str, Any] = {**header.metadata, "live": True, "scan_shape_source": "user",
                                         "frames": self.account.as_dict()}
        self.queue = ByteQueue(queue_bytes)
        self.window_rows, self.fill = window_rows, fill
        self.assembler: RowAssembler | None = None
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._used = False
        self._stop_reason: str | None = None
        #: frames the reader thread has taken off the network, and those the engine's thread took off the queue
        self.pumped = self.dequeued = 0
        self._thread: threading.Thread | None = None
        if getattr(self.reader, "pump_at_open", False):
            self._start_pump()

    def _start_pump(self) -> None:
        """The reader thread, once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._pump, name="stempress-live-receiver", daemon=True)
            self._thread.start()

    def stop(self, reason: str = "stopped") -> None:
        """End the stream at the next frame (safe from a signal handler: it only sets a flag); the rows in
        hand are handed on with what arrived, the rest marked missing."""
        self._stop_reason = reason

    # -- progress --------------------------------------------------------------------------------------------
    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self.shape[2:])) * self.dtype.itemsize

    def lag(self, done_bytes: int) -> int:
        """Frames taken off the network that the sinks have not finished with, given the engine's progress
        (``done_bytes`` of the cube through every sink; offloaded reducers count a block once its partial merged,
        so the frames they still hold are lag too)."""
        queued = self.pumped - self.dequeued  # duplicates, late and corrupt frames leave with their dequeuing
        if self.assembler is None:
            return queued
        done_positions = done_bytes // max(1, self.frame_bytes)  # whole rows, in order: the first ones
        held = self.account.received - int(np.count_nonzero(self.assembler.received[:done_positions]))
        return max(0, queued + held)

    def status(self, done_bytes: int | None = None) -> str:
        """frames/s, MB/s, lag behind the stream (with ``done_bytes``, the engine's progress), buffer fill and
        frames missing so far, in one line."""
        a = self.account
        seconds = max(1e-9, time.monotonic() - self.started)
        missing = self.assembler.missing_emitted if self.assembler else 0
        lag = "" if done_bytes is None else f", lag {self.lag(done_bytes):,} frames"
        return (f"{a.received}/{a.expected} frames, {a.received / seconds:,.0f} frames/s, "
                f"{a.received * self.frame_bytes / seconds / 1e6:,.1f} MB/s{lag}, buffer "
                f"{self.queue.bytes / 1e6:,.1f} MB ({100 * self.queue.bytes / self.queue.capacity:.0f}%), "
                f"missing so far {missing}")

    # -- the stream ------------------------------------------------------------------------------------------
    def blocks(self) -> Iterator[Block]:
        """Whole scan rows in order; ends when every row is handed on (complete or the stream ended)."""
        if self._used:
            raise StempressError(f"{self.url}: a live stream is read once; connect again for another scan")
        self._used = True
        self.assembler = assembler = RowAssembler(self.shape[:2], self.shape[2:], self.dtype, self.account,
                                                  fill=self.fill, window_rows=self.window_rows)
        self._start_pump()
        try:
            while not assembler.done:
                event = self.queue.get(lambda: self._stop_reason)
                self.dequeued += _frames(event)
                if isinstance(event, Frames):
                    yield from self._place(assembler, event)
                    continue
                if isinstance(event, End):
                    self.account.ended = event.reason
                    yield from assembler.flush()
                    break
                if isinstance(event, Corrupt):
                    self.account.corrupt += 1
                    continue
                yield from self._add(assembler, event)
            else:
                if getattr(self.reader, "ends_with_message", False):
                    self._drain(assembler)  # faults after the last row (a duplicate of the last frame) still count
                self.account.ended = "complete" if self.account.missing == 0 else "every row handed on, frames missing"
        finally:
            if self.account.ended == "running":
                self.account.ended = "complete" if self.account.missing == 0 else "stopped"
            self.metadata["frames"].update(self.account.as_dict())  # in place: sinks hold this dict
            self.close()

    def _place(self, assembler: RowAssembler, batch: Frames) -> Iterator[Block]:
        """A batch of frames: a scan row's part at a time when they are a consecutive run inside the scan
        (``add_run``; the rows a part completes go on before the next part is placed, as one by one), else one
        by one as separate ``Frame`` events would be (stopping, as the loop does, once every row is handed on)."""
        start, n, at = int(batch.numbers[0]) - self.first_number, len(batch), 0
        if start >= 0 and start + n <= self.account.expected and (
                n == 1 or bool((np.diff(batch.numbers) == 1).all())):
            scan_x = self.shape[1]
            while at < n:
                stop = min(n, at + scan_x - (start + at) % scan_x)
                blocks = assembler.add_run(start + at, batch.numbers[at:stop], batch.data[at:stop])
                if blocks is None:
                    break
                yield from blocks
                at = stop
            if at == n:
                return
        for frame in itertools.islice(batch.frames(), at, None):
            if assembler.done:
                return
            yield from self._add(assembler, frame)

    def _add(self, assembler: RowAssembler, frame: Frame) -> list[Block]:
        """One frame placed by its number (the rows it lets go), or counted corrupt when the number is outside the
        scan (not a frame of it)."""
        index = frame.number - self.first_number
        if 0 <= index < self.account.expected:
            return assembler.add(index, frame.number, frame.data)
        self.account.corrupt += 1
        return []

    def _drain(self, assembler: RowAssembler) -> None:
        while True:
            event = self.queue.get(lambda: self._stop_reason)
            self.dequeued += _frames(event)
            if isinstance(event, End):
                return
            if isinstance(event, Corrupt):
                self.account.corrupt += 1
                continue
            for frame in event.frames() if isinstance(event, Frames) else [event]:
                self._add(assembler, frame)  # the rows are all handed on: only the accounting counts

    def _pump(self) -> None:
        try:
            for event in self.reader.events(self._stop):
                nbytes = event.data.nbytes if isinstance(event, Frame | Frames) else 0
                self.pumped += _frames(event)  # frames off the network (one writer: this thread)
                if not self.queue.put(event, nbytes, self._stop):
                    return
                if isinstance(event, End):
                    return
        except Exception as exc:  # a reader bug must still end the stream, with its reason
            self.queue.put(End(f"receiver failed: {exc}"), 0, self._stop)

    @property
    def received_mask(self) -> np.ndarray:
        """Which scan positions arrived (all False before ``blocks()`` ran)."""
        if self.assembler is None:
            return np.zeros(self.shape[:2], bool)
        return self.assembler.received.reshape(self.shape[:2])

    def close(self) -> None:
        """Stop the reader thread and close the connection (outputs keep what arrived)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.reader.close()


def _frames(event: Event) -> int:
    """Frames an event carries."""
    return len(event) if isinstance(event, Frames) else int(isinstance(event, Frame))


def parse_url(url: str) -> tuple[str, str, int]:
    """``merlin://HOST:PORT``, ``dectris://HOST:PORT`` or ``dectris2://HOST:PORT`` as (protocol, host, port)."""
    parsed = urlparse(url)
    if parsed.scheme not in PROTOCOLS or not parsed.hostname or parsed.port is None:
        raise StempressError(f"{url!r} is not a detector stream address; give merlin://HOST:PORT, "
                             "dectris://HOST:PORT (SIMPLON stream v1) or dectris2://HOST:PORT (Stream V2, CBOR)")
    return parsed.scheme, parsed.hostname, int(parsed.port)


def open_live(url: str, scan_shape: tuple[int, int], **options: Any) -> LiveSource:
    """Connect to a detector stream (see ``LiveSource``)."""
    return LiveSource(url, scan_shape, **options)
