"""Quantum Detectors Merlin TCP data stream: every message is ``MPX,<10-digit length>,`` then ``length - 1``
bytes; the first message is the acquisition header (``HDR,`` ... ``End``, the ``.hdr`` file's text), every
other one a frame record exactly as a ``.mib`` file stores it (``MQ1`` header, then the pixels: big-endian words
in the binary format, chip-ordered 64-bit words in the raw format), decoded by ``stempress.data.mib`` (one decoder
for files and streams). TCP itself is the backpressure: a receiver that stops reading makes the detector's sends
block."""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any

import numpy as np

from stempress.data import mib_raw
from stempress.data.mib import FrameHeader, counter_depth, decode_frame, parse_frame_header
from stempress.errors import StempressError
from stempress.live.events import Corrupt, End, Event, EventReader, Frame, Frames, StreamHeader

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


#: Bytes of frames one receive buffer holds: frames are received many per call into it and handed on as one
#: ``Frames`` event each time; a buffer is reused once no frame cut from it is held any more.
BUFFER_BYTES = 4 * 1024**2
#: Receive buffers kept for reuse.
SPARE_BUFFERS = 2
#: Messages one receive call may fill (its scatter list), so a call that brings one frame builds a short list.
SCATTER = 64


class _Layout:
    """Where the messages of an acquisition go in a receive buffer: every frame message has the first frame's
    length, so each gets a slot of its own (``slot`` bytes, its pixels aligned) and a receive call scatters the
    stream into the slots (``recvmsg_into``); a batch of slots is then checked at once against the first frame's
    ``MPX`` prefix and header fields 0-7 (any frame number of the same digits)."""

    def __init__(self, first: FrameHeader, lead: bytes) -> None:
        self.message = MPX_BYTES + first.record_bytes
        self.pad = -(MPX_BYTES + first.header_bytes) % 64  # so the pixels start 64-byte aligned
        self.slot = self.pad + self.message + (-(self.pad + self.message) % 64)
        self.slots = max(2, BUFFER_BYTES // self.slot)
        self.first = first
        self.digits = lead.index(b",", 4) - 4
        template = mpx_prefix(first.record_bytes) + lead
        self.template = np.frombuffer(template, np.uint8)
        self.number = slice(MPX_BYTES + 4, MPX_BYTES + 4 + self.digits)
        self.fixed = np.ones(len(template), bool)
        self.fixed[self.number] = False
        self.powers = 10 ** np.arange(self.digits - 1, -1, -1, dtype=np.int64)

    def check(self, leads: np.ndarray) -> tuple[int, np.ndarray]:
        """How many of ``leads`` (``(n, len(template))`` bytes), from the first, are frames of this layout, and
        their frame numbers."""
        digits = leads[:, self.number]
        ok = ((leads == self.template) | ~self.fixed).all(axis=1) & ((digits >= 48) & (digits <= 57)).all(axis=1)
        good = len(ok) if ok.all() else int(np.argmin(ok))
        return good, (digits[:good] - 48).astype(np.int64) @ self.powers


class MerlinReader(EventReader):
    """Connects to a Merlin data port (a TCP client, as to the detector's port 6342).

    Messages are read one by one (``_message``) until the first frame; after it, every message with the first
    frame's length and header fields 2-7 is received in bulk into fixed slots of a reused buffer and handed on
    many at a time (``Frames``). Anything else (a corrupt header, a short frame, another format) goes back to
    the one-by-one path, which reads and judges it exactly as before, then the bulk path resumes."""

    protocol = "merlin"
    ends_with_message = False  # the data port stays open between acquisitions

    def __init__(self, host: str, port: int, *, timeout: float = 10.0, flip_det_y: bool = True) -> None:
        self.host, self.port, self.timeout, self.flip = host, int(port), float(timeout), flip_det_y
        self.url = f"merlin://{host}:{port}"
        self.sock: socket.socket | None = None
        self._pending: list[Event] = []
        self._stop = threading.Event()
        self._left = bytearray()  # stream bytes received but not framed yet: both paths take these first
        self._first_header: FrameHeader | None = None
        self._format: list[bytes] | None = None  # the first frame's header fields 2-7 (size ... layout)
        self._layout: _Layout | None = None
        self._buffer = np.empty(0, np.uint8)
        self._slots = np.empty((0, 0), np.uint8)  # the buffer as (slot, byte)
        self._filled = self._cut = 0  # stream bytes placed in the slots; slots handed on
        self._spare: list[np.ndarray] = []
        self._slot_views: list[memoryview] = []  # of the current buffer, for the receive calls

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
            batch = self._batch()
            if batch is not None:
                return batch
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
            lead = bytes(payload[:64]).split(b",", 8)
            self._format = lead[2:8]
            if len(lead) == 9:  # the fields up to the layout end inside the first 64 bytes: a layout for bulk
                self._layout = _Layout(header, bytes(payload[:64 - len(lead[8])]))
        elif number is not None and self._layout is not None and payload.index(b",", 4) - 4 != self._layout.digits:
            end = payload.index(b",", 4) + 1  # the frame numbers grew a digit: bulk for the new width
            self._layout = _Layout(self._first_header, bytes(payload[:end]) + b",".join(self._format or []) + b",")
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

    # -- bulk path: frames shaped like the first -------------------------------------------------------------
    def _batch(self) -> Frames | None:
        """The frames received so far that have the first frame's layout (receiving if none has arrived), or
        None when the next message is not one: it is left in ``_left`` for ``_message``."""
        layout = self._layout
        if layout is None:
            return None
        while True:
            good, numbers = self._framed(layout)
            if good:
                return self._frames(layout, good, numbers)
            if good is None:
                return None
            self._receive(layout)

    def _framed(self, layout: _Layout) -> tuple[int | None, np.ndarray]:
        """(how many whole slots after the ones handed on hold frames of ``layout``, their numbers); 0 when the
        next slot is still filling, None when it holds something else (then moved back to ``_left``)."""
        whole = self._filled // layout.message
        if whole > self._cut:
            good, numbers = layout.check(self._slots[self._cut:whole, layout.pad:layout.pad + len(layout.template)])
            if good:
                return good, numbers
        elif self._filled - whole * layout.message < MPX_BYTES or bytes(
                self._slots[whole, layout.pad:layout.pad + MPX_BYTES]) == bytes(layout.template[:MPX_BYTES]):
            return 0, layout.powers[:0]
        self._unplace(layout)
        return None, layout.powers[:0]

    def _frames(self, layout: _Layout, good: int, numbers: np.ndarray) -> Frames:
        """Hand on ``good`` checked slots as one event: views of the buffer (binary), or decoded (raw)."""
        first, start = layout.first, layout.pad + MPX_BYTES + layout.first.header_bytes
        data = self._slots[self._cut:self._cut + good, start:start + first.data_bytes]
        self._cut += good
        if first.raw:
            frames = mib_raw.decode(data, first.shape, int(first.counter_depth or 0))
        else:
            frames = data.view(first.dtype).reshape(good, first.height, first.width)
        return Frames(numbers, frames[:, ::-1] if self.flip else frames)

    def _unplace(self, layout: _Layout) -> None:
        """Move the stream bytes from the first slot not handed on back to the front of ``_left``."""
        at, end, parts = self._cut * layout.message, self._filled, []
        while at < end:
            slot, offset = divmod(at, layout.message)
            n = min(end - at, layout.message - offset)
            parts.append(self._slots[slot, layout.pad + offset:layout.pad + offset + n].tobytes())
            at += n
        self._left[:0] = b"".join(parts)
        self._filled = self._cut * layout.message

    def _receive(self, layout: _Layout) -> None:
        """Put more of the stream into the slots: ``_left`` first, else one receive call (waiting for data as
        ``_exactly`` does)."""
        if self._filled == layout.slots * layout.message or len(self._buffer) != layout.slots * layout.slot:
            self._new_buffer(layout)
        if self._left:
            n = min(len(self._left), layout.slots * layout.message - self._filled)
            self._scatter(layout, bytes(self._left[:n]))
            del self._left[:n]
            return
        assert self.sock is not None
        views = self._views(layout)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                k = self.sock.recvmsg_into(views)[0]
                break
            except TimeoutError:  # a short poll, so a stop request is seen; the stall timeout is the deadline
                if time.monotonic() >= deadline or self._stop.is_set():
                    raise
        if k == 0:
            raise _Closed
        self._filled += k

    def _views(self, layout: _Layout) -> list[memoryview]:
        """The free part of the slot being filled and the next ones (up to ``SCATTER`` messages)."""
        slot, offset = divmod(self._filled, layout.message)
        if not self._slot_views:  # one view per slot, made once per buffer (dropped with it: see _new_buffer)
            whole = memoryview(self._buffer)
            self._slot_views = [whole[j * layout.slot + layout.pad:j * layout.slot + layout.pad + layout.message]
                                for j in range(layout.slots)]
        return [self._slot_views[slot][offset:], *self._slot_views[slot + 1:slot + SCATTER]]

    def _scatter(self, layout: _Layout, data: bytes) -> None:
        """Copy ``data`` (stream bytes) into the slots from ``_filled`` on."""
        done = 0
        while done < len(data):
            slot, offset = divmod(self._filled, layout.message)
            n = min(len(data) - done, layout.message - offset)
            self._slots[slot, layout.pad + offset:layout.pad + offset + n] = np.frombuffer(data, np.uint8, n, done)
            done += n
            self._filled += n

    def _new_buffer(self, layout: _Layout) -> None:
        """Start filling a buffer nothing refers to (a spare, or a new one); every slot of the current one has
        been handed on, so it becomes a spare once its frames are let go."""
        size = layout.slots * layout.slot
        for view in self._slot_views:
            view.release()
        self._slot_views = []
        if len(self._buffer) == size and self.buffers.reusable:
            self._spare.append(self._buffer)
        # a spare nothing else refers to: the list's reference and the call's own only (see RowAssembler._unused)
        fresh = next((i for i in range(len(self._spare))
                      if sys.getrefcount(self._spare[i]) == 2 and len(self._spare[i]) == size), None)
        # not zeroed (the stream overwrites every byte it is read from)
        self._buffer = self.buffers.take((size,), np.dtype(np.uint8)) if fresh is None else self._spare.pop(fresh)
        del self._spare[:-SPARE_BUFFERS]
        self._slots = self._buffer.reshape(layout.slots, layout.slot)
        self._filled = self._cut = 0

    # -- one message at a time -------------------------------------------------------------------------------
    def _message(self) -> bytearray:
        prefix = self._exactly(MPX_BYTES)
        if not (prefix.startswith(b"MPX,") and prefix.endswith(b",") and prefix[4:14].isdigit()):
            raise StempressError(f"{self.url}: lost the MPX framing (got {bytes(prefix[:15])!r}); the stream is "
                                 "corrupt")
        return self._exactly(int(prefix[4:14]) - 1)

    def _exactly(self, n: int) -> bytearray:
        """``n`` bytes of the stream: ``_left`` first, then received."""
        assert self.sock is not None
        buffer = bytearray(n)
        got = min(n, len(self._left))
        buffer[:got] = self._left[:got]
        del self._left[:got]
        view = memoryview(buffer)
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
