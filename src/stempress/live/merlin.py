"""Quantum Detectors Merlin TCP data stream: every message is ``MPX,<10-digit length>,`` then ``length - 1``
bytes; the first message is the acquisition header (``HDR,`` ... ``End``, the ``.hdr`` file's text), every
other one a frame record exactly as a ``.mib`` file stores it (``MQ1`` header, then the pixels: big-endian words
in the binary format, chip-ordered 64-bit words in the raw format), decoded by ``stempress.data.mib`` (one decoder
for files and streams). TCP itself is the backpressure: a receiver that stops reading makes the detector's sends
block."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from stempress.data.mib import FrameHeader, counter_depth, decode_frame, parse_frame_header
from stempress.errors import StempressError
from stempress.live.events import Corrupt, End, Event, EventReader, Frame, StreamHeader

MPX_BYTES = 15  # b"MPX," + 10 digits + b","


def mpx_prefix(payload_bytes: int) -> bytes:
    """The ``MPX`` prefix of a message of ``payload_bytes`` (the length counts the comma after the prefix)."""
    return b"MPX,%010d," % (payload_bytes + 1)


def mpx_message(payload: bytes) -> bytes:
    """One message of the stream: the ``MPX`` prefix and ``payload``."""
    return mpx_prefix(len(payload)) + payload


def parse_acquisition_header(payload: bytes | bytearray) -> dict[str, str]:
    """The ``HDR`` message's ``key:\\tvalue`` lines as a dict."""
    text = payload.decode("latin1", "replace")
    pairs = (line.split("\t", 1) for line in text.splitlines() if "\t" in line and not line.startswith(("HDR", "End")))
    return {key.rstrip(":").strip(): value.strip().rstrip("\x00 ") for key, value in pairs}


def acquisition_header(n_frames: int, frames_per_trigger: int, counter_depth: int) -> bytes:
    """A minimal acquisition header for a source that has no ``.hdr`` of its own."""
    return (f"HDR,\t\nFrames in Acquisition (Number):\t{n_frames}\nFrames per Trigger (Number):\t"
            f"{frames_per_trigger}\nCounter Depth (number):\t{counter_depth}\nEnd\t").encode("latin1")


class _Closed(Exception):
    """The peer closed the connection."""


class MerlinReader(EventReader):
    """Connects to a Merlin data port (a TCP client, as to the detector's port 6342)."""

    protocol = "merlin"
    ends_with_message = False  # the data port stays open between acquisitions

    def __init__(self, host: str, port: int, *, timeout: float = 10.0, flip_det_y: bool = True) -> None:
        self.host, self.port, self.timeout, self.flip = host, int(port), float(timeout), flip_det_y
        self.url = f"merlin://{host}:{port}"
        self.sock: socket.socket | None = None
        self._pending: list[Event] = []
        self._stop = threading.Event()
        self._ahead = b""  # the start of the next message's prefix, read with the last payload
        self._first_header: FrameHeader | None = None
        self._format: list[bytes] | None = None  # the first frame's header fields 2-7 (size ... layout)

    def start(self) -> StreamHeader:
        """Connect (retrying until ``timeout``), read the acquisition header and the first valid frame."""
        self.sock = _connect(self.host, self.port, self.timeout, self.url)
        try:
            payload = self._message()
        except (_Closed, TimeoutError, OSError) as exc:
            raise StempressError(f"{self.url}: no acquisition header ({_why(exc, self.timeout)}); start the "
                                 "acquisition after the receiver connects") from exc
        if not payload.startswith(b"HDR,"):
            raise StempressError(f"{self.url}: the first message is not a Merlin acquisition header (HDR); is "
                                 "this Merlin's data port (6342)?")
        hdr = parse_acquisition_header(payload)
        while True:
            event = self._next()
            self._pending.append(event)
            if isinstance(event, End):
                raise StempressError(f"{self.url}: no frame arrived ({event.reason})")
            if isinstance(event, Frame):
                header = self._first_header
                assert header is not None  # set by the frame just read
                metadata: dict[str, Any] = {"format": "mib", "protocol": "merlin", "url": self.url, "hdr": hdr,
                                            "pixel_type": header.pixel_type, "chips": header.chips,
                                            "chip_layout": header.layout, "header_bytes": header.header_bytes,
                                            "counter_depth": counter_depth(list(header.fields), hdr),
                                            "det_y_flipped": self.flip}
                dtype = event.data.dtype.newbyteorder("=")  # frames come big-endian views; the cube is native
                return StreamHeader(event.data.shape, dtype, 1, metadata)  # type: ignore[arg-type]

    def _next(self) -> Event:
        try:
            payload = self._message()
        except _Closed:
            return End("the detector closed the connection")
        except TimeoutError:
            return End(f"no data for {self.timeout:g} s (stalled)")
        except StempressError as exc:  # the framing itself is lost: nothing after it can be trusted
            return End(str(exc))
        except OSError as exc:
            return End(f"connection lost ({exc.strerror or exc})")
        try:
            number = self._same_format(payload)
            header = self._first_header if number is not None else parse_frame_header(payload[:768], "Merlin frame")
            assert header is not None
            # a view of the message (no copy): the row assembler's copy into the scan row swaps the bytes
            frame = decode_frame(header, memoryview(payload)[header.header_bytes:], flip_det_y=self.flip, copy=False)
        except StempressError as exc:
            return Corrupt(str(exc))
        if self._first_header is None:
            self._first_header = header
            self._format = bytes(payload[:64]).split(b",", 8)[2:8]
        return Frame(header.number if number is None else number, frame)

    def _same_format(self, payload: bytearray) -> int | None:
        """The frame number of a frame whose size, chips, geometry, pixel type and layout fields are the first
        frame's (every frame of an acquisition), so it decodes by the first header without parsing the rest
        (timestamps) again; None for anything else, which the full parser then reads or refuses. A raw frame's
        decoding also depends on its counter depth, which its length gives (each depth packs its own size)."""
        first = self._first_header
        if first is None or not payload.startswith(b"MQ1,"):
            return None
        lead = bytes(payload[:64]).split(b",", 8)
        if lead[2:8] != self._format or not lead[1].isdigit():
            return None
        if first.raw and len(payload) != first.record_bytes:
            return None  # another counter depth (or a short frame): the full parser reads or refuses it
        if len(payload) != first.record_bytes:
            raise StempressError(f"frame {int(lead[1])}: {len(payload) - first.header_bytes} data bytes, its header "
                                 f"says {first.data_bytes}; the frame is short or corrupt")
        return int(lead[1])

    def _message(self) -> bytearray:
        ahead, self._ahead = self._ahead, b""
        prefix = ahead + self._exactly(MPX_BYTES - len(ahead)) if len(ahead) < MPX_BYTES else ahead
        if not (prefix.startswith(b"MPX,") and prefix.endswith(b",") and prefix[4:14].isdigit()):
            raise StempressError(f"{self.url}: lost the MPX framing (got {prefix[:15]!r}); the stream is corrupt")
        return self._exactly(int(prefix[4:14]) - 1, MPX_BYTES)

    def _exactly(self, n: int, ahead: int = 0) -> bytearray:
        """``n`` bytes; with ``ahead``, also up to that many more where they have arrived already (the next
        message's prefix, kept in ``_ahead``), so a frame costs one receive call, not two."""
        assert self.sock is not None
        buffer = bytearray(n + ahead)
        view, got = memoryview(buffer), 0
        deadline = time.monotonic() + self.timeout
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except TimeoutError:  # a short poll, so a stop request is seen; the stall timeout is the deadline
                if time.monotonic() >= deadline or self._stop.is_set():
                    raise
                continue
            if k == 0:
                raise _Closed
            got += k
            deadline = time.monotonic() + self.timeout
        view.release()
        if ahead:
            self._ahead = bytes(buffer[n:got])
            del buffer[n:]  # shrinks in place: the frame is decoded straight from it
        return buffer

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _connect(host: str, port: int, timeout: float, url: str) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.settimeout(min(timeout, 0.1))
            return sock
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise StempressError(f"{url}: cannot connect ({exc.strerror or exc}); is the detector (or "
                                     "stempress serve) running there?") from exc
            time.sleep(0.05)


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"nothing for {timeout:g} s"
    if isinstance(exc, _Closed):
        return "the connection closed"
    return str(exc)
