"""What DECTRIS's two ZeroMQ streams (SIMPLON stream v1, JSON multipart; Stream V2, CBOR) share on the receiving
side: a PULL socket whose high-water mark is the backpressure (a full receive queue stops the detector's PUSH),
a receive that gives up after ``timeout`` seconds or when asked to stop, and reading ahead from the series start
to the first valid image (so the cube's shape and dtype are known before the sinks open)."""

from __future__ import annotations

import threading
import time

import numpy as np

from stempress.errors import StempressError
from stempress.live.events import Buffers, Corrupt, End, Event, EventReader, Frame, Frames

#: Messages the receiving socket queues before ZeroMQ stops the sender.
RECEIVE_HWM = 1000
#: Seconds the receiver waits when it finds no message queued, before it polls: a receiver with a core of its own
#: keeps up with the stream and would otherwise wake up for every message (measured: ~10 us more CPU per 96x96
#: frame than taking the few that gather meanwhile as one batch); the latency it adds is this, once per batch.
GATHER_S = 0.001
#: Frames decoded into one buffer (at most ``SLOT_BYTES`` of them), and so handed on together at most.
SLOT_FRAMES, SLOT_BYTES = 64, 2 * 1024**2


class FrameSlots:
    """Frames of the stream's shape and native dtype decoded straight into consecutive slots of a buffer of
    ``n``, so frames that arrive back to back are handed on as one view of it (one event, one queue entry,
    one placement per scan row) instead of one by one; a full buffer is left to the frames in it and a new one
    taken."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, n: int, buffers: Buffers) -> None:
        self.shape, self.dtype, self.n = tuple(shape), np.dtype(dtype), int(n)
        self.frame_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.buffers = buffers  # the reader's, looked up there: the receiving process points it at its ring
        self._new()

    def _new(self) -> None:
        self.buf = self.buffers.take((self.n, *self.shape), self.dtype)
        self.used, self.address = 0, self.buf.ctypes.data

    def fits(self, shape: tuple[int, ...], dtype: np.dtype) -> bool:
        return shape == self.shape and dtype == self.dtype

    def slot(self) -> np.ndarray:
        """Where the next frame goes (``taken`` once it decoded)."""
        if self.used == self.n:
            self._new()
        return self.buf[self.used]

    def slot_address(self) -> int:
        """The next slot's address (``slot``'s memory; call ``slot`` first)."""
        return self.address + self.used * self.frame_bytes

    def taken(self) -> None:
        self.used += 1


class PullReader(EventReader):
    """PULLs from ``tcp://HOST:PORT``; subclasses parse the messages (``_event``) and the series start."""

    protocol = "dectris"
    ends_with_message = True  # an end message follows the last image

    def __init__(self, host: str, port: int, *, timeout: float = 10.0, hwm: int = RECEIVE_HWM) -> None:
        import zmq

        self.host, self.port, self.timeout = host, int(port), float(timeout)
        self.url = f"{self.protocol}://{host}:{port}"
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://{host}:{port}")
        self._noblock, self._rcvmore, self._again = int(zmq.NOBLOCK), int(zmq.RCVMORE), zmq.Again
        self._pending: list[Event] = []
        self._stop = threading.Event()
        self._ahead: list[Event] = []  # an event read while batching that did not join the batch
        self.slots: FrameSlots | None = None  # once the frame shape is known (``_batch_from``)

    def _event(self, parts: list[bytes]) -> Event:
        """One message as an event (a frame decoded into ``self.slots`` when it fits them)."""
        raise NotImplementedError

    def _next(self) -> Event:
        if self._ahead:
            return self._ahead.pop(0)
        parts = self._recv()
        if parts is None:
            return End(f"no data for {self.timeout:g} s (stalled or disconnected)")
        event = self._event(parts)
        if self.slots is not None and isinstance(event, Frame) and event.data.base is self.slots.buf:
            return self._batch(event)
        return event

    def _batch_from(self, first: Frame) -> None:
        """Decode frames shaped like ``first`` into slots from now on, and hand them on in batches, if several fit
        a buffer."""
        n = min(SLOT_FRAMES, SLOT_BYTES // max(1, first.data.nbytes))
        if n > 1 and first.data.dtype.isnative:
            self.slots = FrameSlots(first.data.shape, first.data.dtype, n, self.buffers)

    def _batch(self, first: Frame) -> Event:
        """``first`` and the frames already queued behind it that follow it (the next numbers, the next slots of
        its buffer) as one batch event; whatever does not join is handed on next, nothing waits for more."""
        slots = self.slots
        assert slots is not None
        start, numbers = slots.used - 1, [first.number]
        while slots.used < slots.n:
            parts = self._recv_queued()
            if parts is None:
                break
            event = self._event(parts)
            if not (isinstance(event, Frame) and event.number == numbers[-1] + 1 and event.data.base is slots.buf):
                self._ahead.append(event)
                break
            numbers.append(event.number)
        if len(numbers) == 1:
            return first
        return Frames(np.array(numbers, np.int64), slots.buf[start:start + len(numbers)])

    def _recv(self) -> list[bytes] | None:
        """The next message's parts, or None after ``timeout`` seconds without one (or once asked to stop). A
        message already queued is taken without polling first (while data flows, nearly every one: the poll
        cost as much CPU as the receive)."""
        try:
            return self._parts(self._noblock)
        except self._again:
            pass
        if GATHER_S:  # none queued: let a few arrive, to be taken (and handed on) together, not a wake-up each
            time.sleep(GATHER_S)
            try:
                return self._parts(self._noblock)
            except self._again:
                pass
        deadline = time.monotonic() + self.timeout
        while not self.sock.poll(100):
            if time.monotonic() >= deadline or self._stop.is_set():
                return None
        return self._parts(0)

    def _recv_queued(self) -> list[bytes] | None:
        """The next message if one is queued, else None at once."""
        try:
            return self._parts(self._noblock)
        except self._again:
            return None

    def _parts(self, flags: int) -> list[bytes]:
        """``recv_multipart`` with plain int flags: pyzmq's own combines enum flags per part, which cost a third
        of a small message's receive. ZeroMQ delivers a message's parts together, so the rest never waits."""
        recv, more = self.sock.recv, self.sock.getsockopt
        parts = [recv(flags)]
        while more(self._rcvmore):
            parts.append(recv(0))
        return parts

    def _first_frame(self, expected: str) -> Frame:
        """Read on to the first valid image, keeping every event for ``events``; a stream that ends first raises
        (naming, when images came but none was valid, how many and what was wrong with the first: ``expected``
        says what a valid image holds)."""
        corrupt: list[Corrupt] = []
        while True:
            event = self._next()
            self._pending.append(event)
            if isinstance(event, Corrupt):
                corrupt.append(event)
            if isinstance(event, End) and corrupt:
                raise StempressError(f"{self.url}: {len(corrupt)} image(s) arrived before the {event.reason}, none "
                                     f"valid (the first: {corrupt[0].reason}); check that the sender speaks "
                                     f"{expected}")
            if isinstance(event, End):
                raise StempressError(f"{self.url}: no image arrived ({event.reason})")
            if isinstance(event, Frame):
                return event

    def close(self) -> None:
        self.sock.close(linger=0)
        self.context.term()
