"""``LiveSource``: a detector stream as the engine's streaming source (``data.stream.StreamSource``).

A receiving process (``live.pump``: its own GIL) takes messages off the network and decodes the frames into a
shared ring bounded in bytes (``live.ring``), sending the parent one small message per event (a frame, or a batch of
frames that arrived together: ``events.Frames``, placed a scan row's part at a time); when the sinks fall behind,
the ring fills, the child stops reading and the protocol's own backpressure (TCP for Merlin, the ZeroMQ high-water
mark for DECTRIS v1 and v2) holds the detector back, so memory stays bounded.
``blocks()`` assembles whole scan rows (``accounting.RowAssembler``, which copies each frame into its row, so the
ring's space goes back as soon as an event is placed) with ``valid`` marking what arrived. A stall or a disconnect
ends the stream with a one-line reason in ``account.ended``; the rows hold what arrived."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from stempress.data.base import Block, check_shape_dtype
from stempress.errors import StempressError
from stempress.live.accounting import FrameAccount, RowAssembler
from stempress.live.events import Corrupt, End, Event, Frame, Frames
from stempress.live.pump import ReaderSpec, Receiver

#: Decoded frames held between the network and the sinks (the ring's bytes; see ``ring.ring_bytes``).
QUEUE_BYTES = 256 * 1024**2
PROTOCOLS = ("merlin", "dectris", "dectris2")


class LiveSource:
    """A scan of ``scan_shape`` positions received from ``url`` (``merlin://HOST:PORT``, ``dectris://HOST:PORT``
    for SIMPLON stream v1 or ``dectris2://HOST:PORT[?channel=NAME]`` for Stream V2). Opening connects and reads
    the stream's header and first frame (so the cube's shape and dtype are known before the sinks open);
    ``blocks()`` may be iterated once."""

    def __init__(self, url: str, scan_shape: tuple[int, int], *, timeout: float = 10.0,
                 queue_bytes: int = QUEUE_BYTES, window_rows: int = 1, fill: int = 0,
                 flip_det_y: bool = True, thread: bool = False) -> None:
        protocol, host, port = parse_url(url)
        scan_y, scan_x = (int(n) for n in scan_shape)
        if scan_y < 1 or scan_x < 1:
            raise StempressError(f"scan shape {scan_shape} must be positive; give --scan-shape ROWSxCOLUMNS")
        channel = parse_qs(urlparse(url).query).get("channel", [None])[-1]  # dectris2://HOST:PORT?channel=NAME
        spec = ReaderSpec(protocol, host, port, float(timeout), flip_det_y, channel)
        self.url, self.protocol = url, protocol
        #: the receiving process (``thread=True``: the same receiver in a thread of this one), reading from now on
        self.receiver = Receiver(spec, queue_bytes, thread=thread)
        try:
            header, self.ends_with_message = self.receiver.header()
        except BaseException:
            self.receiver.close()
            raise
        self.first_number = header.first_number
        self.dtype = np.dtype(header.dtype)
        self.shape = check_shape_dtype((scan_y, scan_x, *header.det_shape), self.dtype, url)
        self.name = f"{protocol}-{host}-{port}"
        self.account = FrameAccount(scan_y * scan_x)
        self.metadata: dict[str, Any] = {**header.metadata, "live": True, "scan_shape_source": "user",
                                         "frames": self.account.as_dict()}
        self.window_rows, self.fill = window_rows, fill
        self.assembler: RowAssembler | None = None
        self.started = time.monotonic()
        self._used = False
        self._stop_reason: str | None = None
        #: frames the engine's thread took off the ring (those taken off the network: ``pumped``)
        self.dequeued = 0

    @property
    def pumped(self) -> int:
        """Frames the receiver has taken off the network."""
        return self.receiver.pumped

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
        used, capacity = self.receiver.used, self.receiver.capacity
        return (f"{a.received}/{a.expected} frames, {a.received / seconds:,.0f} frames/s, "
                f"{a.received * self.frame_bytes / seconds / 1e6:,.1f} MB/s{lag}, buffer "
                f"{used / 1e6:,.1f} MB ({100 * used / capacity:.0f}%), missing so far {missing}")

    # -- the stream ------------------------------------------------------------------------------------------
    def blocks(self) -> Iterator[Block]:
        """Whole scan rows in order; ends when every row is handed on (complete or the stream ended)."""
        if self._used:
            raise StempressError(f"{self.url}: a live stream is read once; connect again for another scan")
        self._used = True
        self.assembler = assembler = RowAssembler(self.shape[:2], self.shape[2:], self.dtype, self.account,
                                                  fill=self.fill, window_rows=self.window_rows)
        try:
            while not assembler.done:
                event = self.receiver.get(lambda: self._stop_reason)
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
                if self.ends_with_message:
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
            event = self.receiver.get(lambda: self._stop_reason)
            self.dequeued += _frames(event)
            if isinstance(event, End):
                return
            if isinstance(event, Corrupt):
                self.account.corrupt += 1
                continue
            for frame in event.frames() if isinstance(event, Frames) else [event]:
                self._add(assembler, frame)  # the rows are all handed on: only the accounting counts

    @property
    def received_mask(self) -> np.ndarray:
        """Which scan positions arrived (all False before ``blocks()`` ran)."""
        if self.assembler is None:
            return np.zeros(self.shape[:2], bool)
        return self.assembler.received.reshape(self.shape[:2])

    def close(self) -> None:
        """Stop the receiver and close the connection (outputs keep what arrived)."""
        self.receiver.close()


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
