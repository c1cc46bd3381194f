"""Progress from inside worker processes, back to the caller over a local socket (``ProcessExecutor.progress_link``).

Why a socket per worker and not a ``multiprocessing`` queue: a queue shares a lock between the processes, and a
worker killed while holding it (out of memory, SIGKILL) would stall every other worker's reports; sockets share
nothing, and a dead worker's socket simply closes. Why not a manager's queue: one more process to start, stop and
outlive per run, and a round trip per report.

The caller listens on a Unix socket in a private temporary folder (a localhost TCP port where there are none); a
worker connects the first time one of its tasks reports in this run, sends the run's random key (a stray
connection is dropped), then 16-byte messages ``(part, done)``. One thread here reads them all and calls
``report``; when the run closes the link it first reads what has already arrived, so every report a finished task
made is delivered. Reports are best-effort: a worker that cannot reach the caller drops them, its task never fails
for that, and a send that would wait longer than ``SEND_TIMEOUT`` gives up.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import selectors
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from typing import Any

#: One report: partition index, bytes done in it so far.
MESSAGE = struct.Struct("<qq")
KEY_BYTES = 16
#: Seconds a worker waits on a send before it stops reporting for the run (a caller that stopped reading).
SEND_TIMEOUT = 5.0
#: Seconds between the reader's checks for the end of the run.
POLL = 0.1
#: Reads of what already arrived when the run ends (each drains every ready socket once).
DRAIN_ROUNDS = 100


class ProgressListener:
    """The caller's end: ``link`` (picklable) goes into the tasks; ``report(part, done)`` is called on this
    listener's thread for every message until ``close``."""

    def __init__(self, report: Callable[[int, int], None]) -> None:
        self.report = report
        self.key = os.urandom(KEY_BYTES)
        self._folder: str | None = None
        self.server = self._listen()
        self.link = WorkerLink(self.server.family, self.server.getsockname(), self.key)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.server, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stempress-progress", daemon=True)
        self._thread.start()

    def _listen(self) -> socket.socket:
        server: socket.socket | None = None
        if hasattr(socket, "AF_UNIX"):
            self._folder = tempfile.mkdtemp(prefix="stempress-progress-")  # mode 0700: only this user connects
            try:
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.bind(os.path.join(self._folder, "s"))
            except OSError:  # a TMPDIR too long for a socket's name: the loopback port below
                if server is not None:
                    server.close()
                server = None
        if server is None:
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.bind(("127.0.0.1", 0))
        server.listen(128)
        server.setblocking(False)
        return server

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                self._poll(POLL)
            for _ in range(DRAIN_ROUNDS):  # what finished tasks sent is already in the sockets' buffers
                if not self._poll(0):
                    break
        finally:
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def _poll(self, timeout: float) -> bool:
        events = self._selector.select(timeout)
        for key, _ in events:
            if key.data is None:
                self._accept()
            else:
                self._read(key.fileobj, key.data)  # type: ignore[arg-type]
        return bool(events)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                conn, _ = self.server.accept()
                conn.setblocking(False)
                self._selector.register(conn, selectors.EVENT_READ, _Peer())

    def _read(self, conn: socket.socket, peer: _Peer) -> None:
        try:
            data = conn.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker left (its process ended, or a later run replaced the connection)
            self._selector.unregister(conn)
            conn.close()
            return
        peer.buffer += data
        if not peer.trusted:
            if len(peer.buffer) < KEY_BYTES:
                return
            if not hmac.compare_digest(bytes(peer.buffer[:KEY_BYTES]), self.key):
                self._selector.unregister(conn)
                conn.close()
                return
            peer.trusted = True
            del peer.buffer[:KEY_BYTES]
        whole = len(peer.buffer) // MESSAGE.size * MESSAGE.size
        for part, done in MESSAGE.iter_unpack(bytes(peer.buffer[:whole])):
            with contextlib.suppress(Exception):  # a display that fails must not stop the reports of the others
                self.report(part, done)
        del peer.buffer[:whole]

    def close(self) -> None:
        """Deliver what has arrived, then stop reading and remove the socket (idempotent)."""
        self._stop.set()
        self._thread.join()


class _Peer:
    """A worker's connection: bytes not yet a whole message, and whether it sent the run's key."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.trusted = False


class WorkerLink:
    """``link(part, done)`` inside a worker process: one message to the caller over this process's connection
    for the run (opened on the first call; the connection of an earlier run is closed then)."""

    def __init__(self, family: int, address: Any, key: bytes) -> None:
        self.family, self.address, self.key = family, address, key

    def __call__(self, part: int, done: int) -> None:
        with _LOCK:
            sock = _connection(self)
            if sock is None:
                return
            try:
                sock.sendall(MESSAGE.pack(int(part), int(done)))
            except OSError:  # the caller stopped listening, or is too slow: no more reports from here this run
                sock.close()
                _OPEN[self.address] = None


#: This worker's connection for the current run (None: it failed, do not retry), by the run's address.
_OPEN: dict[Any, socket.socket | None] = {}
_LOCK = threading.Lock()


def _connection(link: WorkerLink) -> socket.socket | None:
    if link.address in _OPEN:
        return _OPEN[link.address]
    for old in _OPEN.values():
        if old is not None:
            old.close()
    _OPEN.clear()
    sock: socket.socket | None = socket.socket(link.family, socket.SOCK_STREAM)
    try:
        sock.settimeout(SEND_TIMEOUT)  # type: ignore[union-attr]
        sock.connect(link.address)  # type: ignore[union-attr]
        sock.sendall(link.key)  # type: ignore[union-attr]
    except OSError:
        sock.close()  # type: ignore[union-attr]
        sock = None
    _OPEN[link.address] = sock
    return sock
