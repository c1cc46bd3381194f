"""What DECTRIS's two ZeroMQ streams (SIMPLON stream v1, JSON multipart; Stream V2, CBOR) share on the receiving
side: a PULL socket whose high-water mark is the backpressure (a full receive queue stops the detector's PUSH),
a receive that gives up after ``timeout`` seconds or when asked to stop, and reading ahead from the series start
to the first valid image (so the cube's shape and dtype are known before the sinks open)."""

from __future__ import annotations

import threading
import time

from stempress.errors import StempressError
from stempress.live.events import Corrupt, End, Event, EventReader, Frame

#: Messages the receiving socket queues before ZeroMQ stops the sender.
RECEIVE_HWM = 1000


class PullReader(EventReader):
    """PULLs from ``tcp://HOST:PORT``; subclasses parse the messages (``_next``) and the series start."""

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

    def _recv(self) -> list[bytes] | None:
        """The next message's parts, or None after ``timeout`` seconds without one (or once asked to stop). A
        message already queued is taken without polling first (while data flows, nearly every one: the poll
        cost as much CPU as the receive)."""
        try:
            return self._parts(self._noblock)
        except self._again:
            pass
        deadline = time.monotonic() + self.timeout
        while not self.sock.poll(100):
            if time.monotonic() >= deadline or self._stop.is_set():
                return None
        return self._parts(0)

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
