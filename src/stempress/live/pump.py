"""The receiving side of a live stream, in a child process: it owns the detector's socket, decodes frames into the
shared ring (``live.ring``) and tells the parent about them over a pipe, one small message per event (a frame, a
batch of frames, a corrupt message, the end), never the pixels.

Why a process: receiving and decoding a frame is mostly Python around C calls (pyzmq takes and gives back the GIL
per message part), so in a thread of the process that also places frames and runs the sinks, the two share one
GIL and the live process topped out at one core on a two-core machine. The child has its own.

``Receiver`` (the parent's handle) starts it with ``forkserver`` (``spawn`` where there is none; never ``fork``,
which is unsafe with the parent's threads), waits for the stream's header, makes the ring (sized by the header's
frame bytes) and turns the child's messages back into events with numpy views of the ring. ``thread=True`` runs the
same ``pump`` in a thread of this process instead (the same code, without the process). The child leaves when
asked (``close``), when the pipe closes and when the parent dies (even by SIGKILL: it watches the parent's
sentinel); the parent unlinks the ring on every path (``close``, also when the ``Receiver`` is collected), and
the resource tracker does if the parent itself is killed."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import selectors
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from stempress.cores import child_context
from stempress.errors import StempressError
from stempress.live.events import Corrupt, End, Event, Frame, Frames, StreamHeader
from stempress.live.ring import Ring, RingBuffers, Stopped, ring_bytes

#: Modules the fork server imports once, so each receiver forks with them loaded (pyzmq, which the DECTRIS readers
#: import when they open: ~15 ms a child otherwise). Measured: ~10 ms from start to the stream's header per receiver
#: (a thread: ~2 ms), the fork server's own start ~0.3 s once per process. ``__main__`` is asked for too, but
#: Python 3.11's fork server never preloads it (it looks for ``main_path`` in data that names it
#: ``init_main_from_path``), so a child started from a script runs the script's imports again (``stempress live``:
#: stempress.cli, ~0.1 s; a notebook's kernel: ipykernel_launcher's imports); under ``python -m pkg`` (pytest) or
#: ``-c`` nothing is run again.
PRELOAD = ("__main__", "zmq", "stempress.live.pump", "stempress.live.merlin", "stempress.live.dectris",
           "stempress.live.dectris2")


@dataclass(frozen=True)
class ReaderSpec:
    """What the child needs to open the stream (picklable)."""

    protocol: str
    host: str
    port: int
    timeout: float
    flip_det_y: bool = True
    channel: str | None = None

    def open(self) -> Any:
        if self.protocol == "merlin":
            from stempress.live.merlin import MerlinReader

            return MerlinReader(self.host, self.port, timeout=self.timeout, flip_det_y=self.flip_det_y)
        if self.protocol == "dectris":
            from stempress.live.dectris import DectrisReader

            return DectrisReader(self.host, self.port, timeout=self.timeout)
        from stempress.live.dectris2 import Dectris2Reader

        return Dectris2Reader(self.host, self.port, timeout=self.timeout, channel=self.channel)


# -- the child -----------------------------------------------------------------------------------------------------

def pump(spec: ReaderSpec, conn: multiprocessing.connection.Connection, in_process: bool = True) -> None:
    """Open the stream, send its header (or the error that stopped it), then every event as a message
    (``_message``) until the end, a stop or the parent's death; last, the CPU time spent here."""
    if in_process:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us through the pipe
        _exit_with_parent()
    stop = threading.Event()
    buffers = RingBuffers(stop)
    cpu = time.thread_time(), time.process_time()
    reader: Any = None
    ring: Ring | None = None
    try:
        try:
            reader = spec.open()
            reader.buffers = buffers
            header = reader.start()
        except BaseException as exc:
            _send_error(conn, exc)
            return
        conn.send(("header", header, bool(getattr(reader, "ends_with_message", False))))
        reply = conn.recv()
        if reply[0] != "ring":
            return  # closed before it began
        try:
            ring = Ring(name=reply[1])
        except FileNotFoundError:
            return  # closed (and unlinked) meanwhile
        buffers.attach(ring)
        _stop_when_asked(conn, stop)
        sent = 0
        try:
            for event in reader.events(stop):
                sent += isinstance(event, Frame | Frames)
                message = _message(event, buffers, ring, sent)
                del event  # its buffer may be free once the parent has placed it
                conn.send(message)
        except Stopped:
            pass
        except Exception as exc:
            if isinstance(exc, BrokenPipeError | ConnectionResetError | EOFError):
                raise  # the parent has gone
            conn.send(("end", f"receiver failed: {exc}"))  # a reader bug still ends the stream, with its reason
        conn.send(("cpu", time.thread_time() - cpu[0], time.process_time() - cpu[1]))
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the parent has gone or closed the pipe
    finally:
        if reader is not None:
            reader.close()
        if ring is not None:
            buffers.ring = None
            ring.close()


def _message(event: Event, buffers: RingBuffers, ring: Ring, number: int) -> tuple:
    """An event as the parent rebuilds it: frames (event ``number``) as where they are in the ring (copied there
    first when a reader decoded them elsewhere: before the first frame or on a path that makes its own array)."""
    if isinstance(event, Frame | Frames):
        data = event.data
        offset = ring.offset_of(data)
        if offset is None:
            copy = buffers.take(data.shape, data.dtype)
            copy[...] = data
            offset, data = ring.offset_of(copy), copy
            del copy
        assert offset is not None
        ring.count(len(event) if isinstance(event, Frames) else 1)
        numbers = event.numbers.tobytes() if isinstance(event, Frames) else int(event.number)
        buffers.mark(offset, number)
        return ("frames", number, numbers, offset, data.shape, data.strides, data.dtype.str)
    if isinstance(event, Corrupt):
        return ("corrupt", event.reason)
    return ("end", event.reason)


def _send_error(conn: multiprocessing.connection.Connection, exc: BaseException) -> None:
    with contextlib.suppress(OSError):
        try:
            conn.send(("error", exc if isinstance(exc, StempressError) else StempressError(str(exc) or repr(exc))))
        except Exception:
            conn.send(("error", StempressError(str(exc))))


def _exit_with_parent() -> None:
    """A thread that leaves the process when the parent dies (even by SIGKILL): nobody would read what we receive,
    and the connection must be let go."""
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        sentinel = parent.sentinel
        threading.Thread(target=lambda: (multiprocessing.connection.wait([sentinel]), os._exit(1)),
                         name="stempress-live-orphan", daemon=True).start()


def _stop_when_asked(conn: multiprocessing.connection.Connection, stop: threading.Event) -> None:
    """A thread that sets ``stop`` when the parent asks (a message) or closes its end of the pipe."""
    threading.Thread(target=lambda: (multiprocessing.connection.wait([conn]), stop.set()),
                     name="stempress-live-stop", daemon=True).start()


# -- the parent ----------------------------------------------------------------------------------------------------

class Receiver:
    """The parent's end: ``start`` the child and wait for the header; then ``get`` events in order, each valid
    until the next ``get``; ``close`` on every path."""

    def __init__(self, spec: ReaderSpec, queue_bytes: int, *, thread: bool = False) -> None:
        self.spec, self.queue_bytes = spec, int(queue_bytes)
        self.ring: Ring | None = None
        self.ring_name: str | None = None
        self._holding = 0  # the number of the event being placed
        self.cpu: dict[str, float] | None = None  # the receiver's CPU seconds (its thread, its process), at the end
        self._state = _State()
        self._finalizer = weakref.finalize(self, self._state.close)
        self.started = time.monotonic()
        if thread:
            self.conn, child = multiprocessing.Pipe()
            worker: Any = threading.Thread(target=pump, args=(spec, child, False), name="stempress-live-receiver",
                                           daemon=True)
        else:
            ctx = child_context(PRELOAD)
            self.conn, child = ctx.Pipe()
            worker = ctx.Process(target=pump, args=(spec, child, True), name="stempress-live-receiver", daemon=True)
        self._state.conn, self._state.worker = self.conn, worker
        worker.start()
        if not thread:
            child.close()  # our copy: the pipe reads as closed once the child has gone
        self._ready: selectors.BaseSelector | None = selectors.DefaultSelector()  # once: conn.poll makes one per call
        try:
            self._ready.register(self.conn, selectors.EVENT_READ)
        except (ValueError, OSError):  # a connection no selector takes (Windows' pipes): conn.poll then
            self._ready.close()
            self._ready = None
        self.start_s = time.monotonic() - self.started

    def header(self) -> tuple[StreamHeader, bool]:
        """The stream's header and whether it ends with a message (raises the child's error), and the ring made."""
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            raise StempressError(f"{self.spec.protocol}://{self.spec.host}:{self.spec.port}: the receiving process "
                                 f"exited before the stream's header ({self._exit()}); a script that opens a live "
                                 "stream keeps its work under if __name__ == '__main__': (the process imports the "
                                 "main module)") from None
        if message[0] == "error":
            raise message[1]
        _, header, ends_with_message = message
        self._state.opened = True
        frame_bytes = int(np.prod(header.det_shape)) * np.dtype(header.dtype).itemsize
        self.ring = self._state.ring = Ring(ring_bytes(self.queue_bytes, frame_bytes))
        self.ring_name = self.ring.name
        self.conn.send(("ring", self.ring.name))
        return header, ends_with_message

    @property
    def pid(self) -> int | None:
        """The receiving process's id (None: a thread of this one)."""
        return getattr(self._state.worker, "pid", None)

    @property
    def capacity(self) -> int:
        return self.ring.capacity if self.ring is not None else self.queue_bytes

    @property
    def used(self) -> int:
        """Bytes of the ring in use (as of the last buffer the child took)."""
        return self._counter("used")

    @property
    def pumped(self) -> int:
        return self._counter("pumped")

    @property
    def peak(self) -> int:
        return self._counter("peak")

    def _counter(self, name: str) -> int:
        ring = self.ring
        if ring is None:
            return self._state.final.get(name, 0)
        return getattr(ring, name)

    def get(self, stopped: Any = lambda: None) -> Event:
        """The next event (its frames valid until the next call), or ``End`` as soon as ``stopped()`` gives a
        reason (checked every 0.1 s) or the child has gone."""
        ring = self.ring
        assert ring is not None
        ring.placed(self._holding)  # the previous event is placed: its buffer may be filled again
        while True:
            reason = stopped()
            if reason:
                return End(reason)
            try:
                if not (self._ready.select(0.1) if self._ready is not None else self.conn.poll(0.1)):
                    continue
                message = self.conn.recv()
            except (EOFError, OSError):
                return End(f"receiver failed: the receiving process exited ({self._exit()})")
            kind = message[0]
            if kind == "frames":
                _, self._holding, numbers, offset, shape, strides, dtype = message
                data = ring.view(offset, shape, dtype, strides)
                if isinstance(numbers, int):
                    return Frame(numbers, data)
                return Frames(np.frombuffer(numbers, np.int64), data)
            if kind == "corrupt":
                return Corrupt(message[1])
            if kind == "end":
                return End(message[1])
            if kind == "cpu":
                self.cpu = _cpu(message)
                return End("receiver failed: it stopped without an end")

    def _exit(self) -> str:
        worker = self._state.worker
        if isinstance(worker, multiprocessing.process.BaseProcess):
            worker.join(1)
            return f"exit code {worker.exitcode}"
        return "its thread ended"

    def close(self) -> None:
        """Stop the child (waiting a moment for its CPU times), unlink the ring."""
        self.ring = None  # the counters are read from the last look from now on (``_State.final``)
        if self._ready is not None:
            self._ready.close()
            self._ready = None
        cpu = self._state.close()
        if cpu is not None and self.cpu is None:
            self.cpu = cpu


def _cpu(message: tuple) -> dict[str, float]:
    """The child's last message, ``("cpu", thread seconds, process seconds)``, as ``Receiver.cpu`` holds it."""
    return {"thread_s": message[1], "process_s": message[2]}


class _State:
    """What ``close`` needs, apart from the ``Receiver`` (so a collected one is closed by its finalizer too)."""

    def __init__(self) -> None:
        self.conn: Any = None
        self.worker: Any = None
        self.ring: Ring | None = None
        self.final: dict[str, int] = {}
        self.opened = False  # the header came: from then on the child is stopped through the pipe
        self.closed = False

    def close(self) -> dict[str, float] | None:
        if self.closed:
            return None
        self.closed = True
        cpu = None
        conn, worker = self.conn, self.worker
        if not self.opened and isinstance(worker, multiprocessing.process.BaseProcess) and worker.is_alive():
            worker.kill()  # still opening the stream (up to its timeout): nothing of it to keep
        elif conn is not None:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
            deadline = time.monotonic() + 5
            with contextlib.suppress(EOFError, OSError):
                while time.monotonic() < deadline and conn.poll(max(0.0, deadline - time.monotonic())):
                    message = conn.recv()  # events sent meanwhile are dropped: nobody places them
                    if message[0] == "cpu":
                        cpu = _cpu(message)
                        break
        if worker is not None:
            worker.join(5)
            if isinstance(worker, multiprocessing.process.BaseProcess) and worker.is_alive():
                worker.kill()
                worker.join(1)
        if self.ring is not None:
            self.final = {"pumped": self.ring.pumped, "peak": self.ring.peak}  # "used": none any more
            self.ring.close()
            self.ring = None
        if conn is not None:
            conn.close()
        return cpu
