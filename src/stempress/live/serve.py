"""``serve``: a detector simulator replaying any source as Merlin or a DECTRIS detector sends it, at a set frame
rate, with faults injected on purpose (dropped, duplicated, swapped, corrupt frames, a stall, a disconnect), so
the receiver's accounting can be checked against what was really sent (``FaultLog``) and a user can rehearse.

A ``.mib`` source is sent as its file's own records, byte for byte (unless another Merlin format is asked for);
any other source as frames encoded by ``data.mib.encode_frame`` (Merlin, binary or raw), ``live.dectris``
(DECTRIS stream v1) or ``live.dectris2`` (Stream V2), read one scan row at a time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stempress.data.mib import FrameHeader, encode_frame, parse_frame_header
from stempress.errors import StempressError
from stempress.live import dectris, dectris2
from stempress.live.control import MerlinControlServer, SimplonApiServer
from stempress.live.merlin import acquisition_header, mpx_message, mpx_prefix
from stempress.live.zmq_pull import RECEIVE_HWM

PROTOCOLS = ("merlin", "dectris", "dectris2")
MERLIN_FORMATS = ("binary", "raw")  # Merlin's FILEFORMAT 0 (U08/U16/U32 frames) and 2 (R64 chip readout)
#: What each DECTRIS stream sends when no encoding is asked for.
DEFAULT_ENCODINGS = {"dectris": "bs16-lz4<", "dectris2": "bslz4"}


@dataclass(frozen=True)
class Faults:
    """Per-frame probabilities (one fault at most per frame), a ``stall`` of that many seconds before frame
    ``stall_at`` (default: half way), and a disconnect after ``disconnect_after`` sent frames."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    stall: float = 0.0
    stall_at: int | None = None
    disconnect_after: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        p = (self.drop, self.duplicate, self.reorder, self.corrupt)
        if min(p) < 0 or sum(p) > 1:
            raise StempressError(f"fault probabilities {p} must be >= 0 and add up to at most 1")


@dataclass
class FaultLog:
    """What was sent: the frame indices each fault hit, in order, and how the stream ended."""

    frames: int
    dropped: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    reordered: list[int] = field(default_factory=list)
    corrupted: list[int] = field(default_factory=list)
    sends: list[tuple[int, str]] = field(default_factory=list)
    sent: int = 0
    ended: str = "complete"
    #: from the receiver's connection to the last send: with ``rate``, how well the schedule was kept
    seconds: float = 0.0

    def delivered(self) -> set[int]:
        """Frame indices sent intact (before any disconnect)."""
        return {i for i, kind in self.sends[:self.sent] if kind == "ok"}


def schedule(n: int, faults: Faults) -> FaultLog:
    """The order of sends for ``n`` frames: ``(index, "ok" | "corrupt")``, faults drawn from ``faults.seed``.
    The last frame is never duplicated or swapped (a receiver stops once the scan is whole)."""
    rng = np.random.default_rng(faults.seed)
    log = FaultLog(n)
    i = 0
    edges = np.cumsum([faults.drop, faults.duplicate, faults.reorder, faults.corrupt])
    while i < n:
        kind = int(np.searchsorted(edges, rng.random(), side="right"))  # 0 drop .. 3 corrupt, 4 none
        if kind in (1, 2) and i >= n - 2:
            kind = 4
        if kind == 0:
            log.dropped.append(i)
        elif kind == 1:
            log.sends += [(i, "ok"), (i, "ok")]
            log.duplicated.append(i)
        elif kind == 2:
            log.sends += [(i + 1, "ok"), (i, "ok")]
            log.reordered.append(i)
            i += 1
        elif kind == 3:
            log.sends.append((i, "corrupt"))
            log.corrupted.append(i)
        else:
            log.sends.append((i, "ok"))
        i += 1
    return log


class _Frames:
    """Frame ``i`` of a source, reading one scan row at a time (sends are at most one frame out of order)."""

    def __init__(self, source: Any) -> None:
        self.source, self.scan_x = source, int(source.shape[1])
        self._row, self._data = -1, np.empty(0)

    def __call__(self, i: int) -> np.ndarray:
        row = i // self.scan_x
        if row != self._row:
            self._row, self._data = row, self.source.read_rows(row, row + 1)[0]
        return self._data[i % self.scan_x]


def _send_parts(conn: socket.socket, parts: list[bytes | bytearray], message_ends: list[int]) -> None:
    """``sendall`` of the parts one after the other, gathered by the kernel (no joined copy of a frame). Where it
    fails, the error carries ``messages_sent``: how many of the messages (ending after the parts numbered
    ``message_ends``) the kernel took whole, so a group's sender still counts exactly."""
    views = [memoryview(p).cast("B") for p in parts]
    done = 0  # parts sent whole
    try:
        while views:
            sent = conn.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
                done += 1
            if views and sent:
                views[0] = views[0][sent:]
    except OSError as exc:
        exc.messages_sent = sum(1 for end in message_ends if end <= done)  # type: ignore[attr-defined]
        raise


class _MibRecords:
    """Record ``i`` of a ``.mib`` file, its bytes as stored."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - held for the whole replay, closed by close()
        self.header: FrameHeader = parse_frame_header(self.file.read(768), str(path))
        self.size = self.header.record_bytes

    def __call__(self, i: int) -> bytes:
        self.file.seek(i * self.size)
        return self.file.read(self.size)

    def close(self) -> None:
        self.file.close()


def _mib_path(source: Any, merlin_format: str | None = None) -> Path | None:
    """The file a source reads when it is a ``.mib`` replayed as stored (so frames go out byte for byte): read
    in the default orientation and stored in the format asked for (any, when None)."""
    meta = getattr(source, "metadata", {})
    path = getattr(source, "path", None)
    stored = "raw" if meta.get("pixel_type") == "R64" else "binary"
    if meta.get("format") == "mib" and path is not None and meta.get("det_y_flipped", True) \
            and merlin_format in (None, stored):
        return Path(path)
    return None


def _corrupt_merlin(record: bytes, i: int) -> bytes:
    """Even frames: a bad header (``MQ1`` mangled); odd frames: a short frame (its last bytes cut)."""
    return b"MQX" + record[3:] if i % 2 == 0 else record[:-16]


def _corrupt_dectris(parts: list[bytes], i: int) -> list[bytes]:
    """Even frames: an unreadable image header; odd frames: data shorter than its header says."""
    return [b"{not json", *parts[1:]] if i % 2 == 0 else [parts[0], parts[1], parts[2][:-8], parts[3]]


def serve(source: Any, protocol: str, *, port: int = 0, host: str = "127.0.0.1", rate: float = 0.0,
          faults: Faults | None = None, encoding: str | None = None, timeout: float = 60.0,
          ready: Callable[[int], None] | None = None, api_port: int | None = None,
          api_ready: Callable[[int], None] | None = None, api_linger: float = 3.0,
          merlin_format: str | None = None) -> FaultLog:
    """Send ``source`` once to one receiver as ``protocol`` (``merlin``: a TCP server, as the detector's data
    port; ``dectris``: a ZeroMQ PUSH socket sending SIMPLON stream v1, ``dectris2``: Stream V2, CBOR). ``encoding``:
    the DECTRIS data encoding (None: ``DEFAULT_ENCODINGS``). ``port`` 0 takes a free one, told to ``ready(port)`` once
    listening; ``rate`` frames/s (0: as fast as the receiver takes them). With ``api_port`` (0: a free one, told
    to ``api_ready``) the detector's control interface answers too, as clients such as LiberTEM-live need
    (``live.control``: Merlin's control port, DECTRIS's SIMPLON REST API), and outlives the stream until no
    client asked it anything for ``api_linger`` seconds. ``merlin_format``: ``binary`` or ``raw`` frames (None:
    a ``.mib`` as stored, anything else binary). Returns what was sent."""
    if protocol not in PROTOCOLS:
        raise StempressError(f"unknown detector protocol {protocol!r}; choose merlin, dectris or dectris2")
    if merlin_format not in (None, *MERLIN_FORMATS):
        raise StempressError(f"unknown Merlin format {merlin_format!r}; choose binary or raw")
    faults = faults or Faults()
    n = int(source.shape[0]) * int(source.shape[1])
    log = schedule(n, faults)
    stall_at = faults.stall_at if faults.stall_at is not None else len(log.sends) // 2
    limit = len(log.sends) if faults.disconnect_after is None else min(len(log.sends), faults.disconnect_after)
    send = {"merlin": _MerlinSender, "dectris": _DectrisSender, "dectris2": _Dectris2Sender}[protocol]
    # the data format the sender is asked for
    form = merlin_format if protocol == "merlin" else encoding or DEFAULT_ENCODINGS[protocol]
    with send(source, host, port, timeout, ready, form, api_port, api_ready) as sender:
        sender.linger = (api_linger, timeout)
        started = time.monotonic()
        try:
            k = 0
            while k < limit:
                if k == stall_at and faults.stall > 0:
                    time.sleep(faults.stall)
                    started += faults.stall
                if rate > 0:
                    time.sleep(max(0.0, started + k / rate - time.monotonic()))
                # the sends due by now (every one, at rate 0), up to the sender's group and never past the stall
                end = min(limit, k + sender.group, stall_at if k < stall_at and faults.stall > 0 else limit)
                end = due_sends(k, end, started, rate, time.monotonic())
                sender.send_many([(i, kind == "corrupt") for i, kind in log.sends[k:end]])
                k = log.sent = end
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            log.sent += getattr(exc, "messages_sent", 0)  # a group's frames the kernel took before it failed
            log.ended = f"the receiver went away after {log.sent} frames ({type(exc).__name__})"
            sender.clean, sender.deliver = False, False
            return log
        finally:
            log.seconds = time.monotonic() - started
        if limit < len(log.sends):
            log.ended = f"disconnected after {limit} frames"
            sender.clean, sender.deliver = False, True
    return log


def due_sends(k: int, end: int, started: float, rate: float, now: float) -> int:
    """Where the group of sends from ``k`` (whose time has come) ends: at ``rate`` frames/s send ``j`` is due at
    ``started + j / rate``, so the group takes every send due by ``now``, at least ``k`` itself, at most up to
    ``end``; at rate 0 (as fast as the receiver takes them) all up to ``end``. No send goes before its time."""
    if rate <= 0:
        return end
    due = k + 1
    while due < end and started + due / rate <= now:
        due += 1
    return due


#: The DECTRIS encodings LiberTEM-live can receive (libertem-dectris 0.3 decodes no uncompressed ``<``).
LIBERTEM_LIVE_ENCODINGS = ("bs32-lz4<", "bs16-lz4<", "bs8-lz4<", "lz4<")


def libertem_live_call(protocol: str, host: str, data_port: int, api_port: int, nav_shape: tuple[int, ...],
                       encoding: str | None = None) -> str:
    """What a LiberTEM-live user runs (after ``ctx = LiveContext()``) to receive this stream in passive mode, or
    why it cannot."""
    if protocol == "dectris2":
        return "cannot receive Stream V2 (LiberTEM-live 0.3 reads SIMPLON stream v1): serve --as dectris for it"
    encoding = encoding or DEFAULT_ENCODINGS["dectris"]
    if protocol == "dectris" and encoding not in LIBERTEM_LIVE_ENCODINGS:
        return (f"cannot decode the {encoding!r} encoding (libertem-dectris decodes "
                f"{', '.join(LIBERTEM_LIVE_ENCODINGS)}): serve with --encoding bs16-lz4< for it")
    shape = tuple(int(n) for n in nav_shape)
    return (f"conn = ctx.make_connection({protocol!r}).open(data_host={host!r}, data_port={data_port}, "
            f"api_host={host!r}, api_port={api_port}); aq = ctx.make_acquisition(conn=conn, "
            f"pending_aq=conn.wait_for_acquisition(10.0), nav_shape={shape})")


class _Sender:
    clean = True  # the whole scan went out: end it as the detector does
    deliver = True  # what was sent reaches the receiver before the socket closes (not when it went away)
    api: MerlinControlServer | SimplonApiServer | None = None
    linger = (0.0, 0.0)  # (idle seconds, at most) the control interface answers after the stream

    def close_api(self) -> None:
        if self.api is not None:
            self.api.wait_idle(*self.linger)
            self.api.close()

    def __enter__(self) -> _Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    #: sends ``serve`` may hand over in one ``send_many`` call (the ones already due)
    group = 1

    def send(self, i: int, corrupt: bool) -> None:
        raise NotImplementedError

    def send_many(self, sends: list[tuple[int, bool]]) -> None:
        """``send`` each ``(frame index, corrupt)`` in order."""
        for i, corrupt in sends:
            self.send(i, corrupt)

    def close(self) -> None:
        raise NotImplementedError


#: Merlin frames sent in one ``sendmsg`` call, when that many are due (a call per frame cost the sender more CPU
#: than a receiver of the same stream spent; TCP carries the same bytes either way).
MERLIN_GROUP = 32


class _MerlinSender(_Sender):
    group = MERLIN_GROUP

    def __init__(self, source: Any, host: str, port: int, timeout: float, ready: Any, merlin_format: str | None,
                 api_port: int | None = None, api_ready: Any = None) -> None:
        path = _mib_path(source, merlin_format)
        self.raw = merlin_format == "raw"
        self.records: Any = _MibRecords(path) if path is not None else None
        self.frames = _Frames(source)
        self._out: list[bytearray | None] = [None] * self.group  # a record buffer for each send of a group
        n = int(source.shape[0]) * int(source.shape[1])
        hdr_path = path.with_suffix(".hdr") if path is not None else None
        depth = int(source.metadata.get("counter_depth") or {1: 6, 2: 12, 4: 24}.get(
            np.dtype(source.dtype).itemsize, 12))
        self.depth: int | None = depth if self.raw else None  # raw words are packed for the headers' depth
        if hdr_path is not None and hdr_path.is_file():
            self.header = hdr_path.read_bytes()
        else:
            self.depth = depth
            self.header = acquisition_header(n, int(source.shape[1]), depth)
        if api_port is not None:
            self.api = MerlinControlServer(host, api_port, {
                "IMAGEX": source.shape[3], "IMAGEY": source.shape[2], "COUNTERDEPTH": int(depth),
                "NUMFRAMESTOACQUIRE": n, "DETECTORSTATUS": 0, "FILEFORMAT": 2 if self.raw else 0})
            if api_ready is not None:
                api_ready(self.api.port)
        self.server = socket.create_server((host, port))
        self.server.settimeout(timeout)
        if ready is not None:
            ready(self.server.getsockname()[1])
        try:
            self.conn, _ = self.server.accept()
        except TimeoutError as exc:
            self.server.close()
            if self.api is not None:
                self.api.close()
            raise StempressError(f"no receiver connected to port {port} within {timeout:g} s") from exc
        self.conn.settimeout(timeout)
        self.conn.sendall(mpx_message(self.header))

    def record(self, i: int, slot: int = 0) -> bytes | bytearray:
        """Frame ``i``'s record, in buffer ``slot`` of a group (reused by the next group: the kernel has copied
        it by then)."""
        if self.records is not None:
            return self.records(i)
        # the header's depth
        self._out[slot] = encode_frame(i + 1, self.frames(i), counter_depth=self.depth, raw=self.raw,
                                       out=self._out[slot])
        return self._out[slot]

    def send(self, i: int, corrupt: bool) -> None:
        self.send_many([(i, corrupt)])

    def send_many(self, sends: list[tuple[int, bool]]) -> None:
        """The messages of ``sends`` in one gathered ``sendmsg`` (``mpx_message`` without joining copies)."""
        parts: list[bytes | bytearray] = []
        ends: list[int] = []
        for slot, (i, corrupt) in enumerate(sends):
            record = self.record(i, slot)
            parts += [mpx_message(_corrupt_merlin(bytes(record), i))] if corrupt else [mpx_prefix(len(record)),
                                                                                      record]
            ends.append(len(parts))
        _send_parts(self.conn, parts, ends)

    def close(self) -> None:
        self.conn.close()
        self.server.close()
        if self.records is not None:
            self.records.close()
        self.close_api()


class _Repeats:
    """``encode(frame)`` once per distinct frame content: a replayed scan repeats frames (a benchmark cycles a few,
    a scan of vacuum repeats its dark frames), and encoding them (bitshuffle-LZ4, md5, JSON) cost more than the
    rest of a send. Keyed on the frame's bytes, so a repeat is exact, never guessed from where a frame came from.
    At most ``max_bytes`` of frames are held; a source that repeated nothing in its first ``probe`` frames is
    taken as one that does not, and is encoded frame by frame without keys."""

    def __init__(self, encode: Callable[[np.ndarray], Any], max_bytes: int = 64 * 1024**2,
                 probe: int = 1024) -> None:
        self.encode, self.max_bytes, self.probe = encode, max_bytes, probe
        self.held: dict[bytes, Any] = {}
        self.bytes = self.seen = self.hits = 0

    def __call__(self, frame: np.ndarray) -> Any:
        if self.seen >= self.probe and not self.hits:
            return self.encode(frame)
        self.seen += 1
        key = frame.tobytes()
        found = self.held.get(key)
        if found is not None:
            self.hits += 1
            return found
        found = self.encode(frame)
        if self.bytes + len(key) <= self.max_bytes:
            self.held[key] = found
            self.bytes += len(key)
        return found


class _DectrisSender(_Sender):
    """A ZeroMQ PUSH socket sending SIMPLON stream v1 (JSON multipart); ``_Dectris2Sender`` sends Stream V2."""

    encodings = dectris.ENCODINGS
    stream_format = "legacy"  # SIMPLON stream/config "format"
    name = "DECTRIS"

    def __init__(self, source: Any, host: str, port: int, timeout: float, ready: Any, encoding: str,
                 api_port: int | None = None, api_ready: Any = None) -> None:
        import zmq

        if encoding not in self.encodings:
            raise StempressError(f"unknown {self.name} encoding {encoding!r}; choose one of "
                                 f"{', '.join(self.encodings)}")
        self.frames, self.encoding, self.timeout = _Frames(source), encoding, timeout
        self.encoded = _Repeats(self.encode)
        self.dtype, self.det_shape = np.dtype(source.dtype), (int(source.shape[2]), int(source.shape[3]))
        self.check(self.dtype)
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, RECEIVE_HWM)
        self.sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        if port:
            self.sock.bind(f"tcp://{host}:{port}")
        else:
            port = self.sock.bind_to_random_port(f"tcp://{host}")
        _, _, dy, dx = (int(s) for s in source.shape)
        self.images = int(source.shape[0]) * int(source.shape[1])
        config = {"x_pixels_in_detector": dx, "y_pixels_in_detector": dy, "nimages": 1,
                  "ntrigger": self.images, "trigger_mode": "exte",
                  "bit_depth_image": np.dtype(source.dtype).itemsize * 8}
        if api_port is not None:
            self.api = SimplonApiServer(host, api_port, {"detector": dict(config), "stream": {
                "mode": "enabled", "format": self.stream_format, "header_detail": "basic"}})
            if api_ready is not None:
                api_ready(self.api.port)
        if ready is not None:
            ready(port)
        self._send(self.header(config))

    def check(self, dtype: np.dtype) -> None:
        """Refuse a source the stream cannot carry (stream v1 carries any dtype)."""

    def header(self, config: dict[str, Any]) -> list[bytes]:
        return dectris.header_parts(1, config)

    def encode(self, frame: np.ndarray) -> Any:
        """What a frame's messages share whatever its number (``_Repeats`` keeps it for a repeated frame)."""
        return dectris.encoded_image(frame, self.encoding)

    def image(self, i: int, corrupt: bool) -> list[bytes]:
        desc, blob, digest = self.encoded(self.frames(i))
        parts = [dectris.image_head(i, digest), desc, blob, dectris.CONFIG_PART]
        return _corrupt_dectris(parts, i) if corrupt else parts

    def end(self) -> list[bytes]:
        return dectris.end_parts(1)

    def _send(self, parts: list[bytes]) -> None:
        """``send_multipart`` with plain int flags (pyzmq's own combines enum flags per part: two thirds of a small
        message's send); ZeroMQ takes a message's other parts once it took the first."""
        import zmq

        send, more = self.sock.send, int(zmq.SNDMORE)
        try:
            for part in parts[:-1]:
                send(part, more)
            send(parts[-1], 0)
        except zmq.Again as exc:
            raise TimeoutError(f"no receiver took data for {self.timeout:g} s") from exc

    def send(self, i: int, corrupt: bool) -> None:
        self._send(self.image(i, corrupt))

    def close(self) -> None:
        try:
            if self.clean:
                self._send(self.end())
        finally:
            self.sock.close(linger=int(self.timeout * 1000) if self.deliver else 0)  # deliver what is queued
            self.context.term()
            self.close_api()


class _Dectris2Sender(_DectrisSender):
    """Stream V2: one CBOR map per ZeroMQ message (start, images, end) on the same PUSH socket."""

    encodings = dectris2.ENCODINGS
    stream_format = "cbor"
    name = "Stream V2"
    series_id, unique_id = 1, "stempress-serve-1"

    def check(self, dtype: np.dtype) -> None:
        dectris2.image_dtype(dtype)

    def header(self, config: dict[str, Any]) -> list[bytes]:
        return [dectris2.start_message(self.series_id, self.unique_id, self.det_shape, self.dtype, self.images,
                                       detector_description="stempress serve", frame_time=0.0, count_time=0.0)]

    def encode(self, frame: np.ndarray) -> Any:
        return dectris2.image_array(frame, self.encoding)

    def image(self, i: int, corrupt: bool) -> list[bytes]:
        cut = 8 if corrupt and i % 2 else 0  # odd frames: data short of its shape
        frame = self.frames(i)
        array = dectris2.image_array(frame, self.encoding, cut) if cut else self.encoded(frame)
        message = dectris2.image_message(i, array, self.encoding, self.series_id, self.unique_id)
        return [message[:-8] if corrupt and not cut else message]  # even frames: the message cut (not CBOR)

    def end(self) -> list[bytes]:
        return [dectris2.end_message(self.series_id, self.unique_id)]
