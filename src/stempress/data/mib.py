"""Quantum Detectors Merlin ``.mib`` source: a memory map over (header, big-endian frame) records.

Raw (``R64``) files, which RosettaSciIO does not decode, are memory-mapped here and decoded a block at a time
by ``data.mib_raw`` into the same frames the binary formats give.

RosettaSciIO's public ``load_mib_data`` (the maintained reader) parses the headers and returns a
read-only numpy memory map of the frames, so only the frames of the requested scan rows are touched.
The first header is checked here first, because RosettaSciIO would map an unknown pixel type as float64.

Scan shape policy (the file does not store it), first match wins:

1. the user's ``scan_shape`` (its product must equal the frame count);
2. ``.hdr`` "Frames per Trigger" > 1: a line trigger, so that is ``scan_x``;
3. frame timestamps: with a pixel trigger each line ends in a longer fly-back interval; the first
   interval above the mean gives ``scan_x`` when the pattern is periodic and clearly above jitter
   (RosettaSciIO's rule, made stricter; it reads the 4x2 test files as 2 rows of 4);
4. a perfect square frame count ``(n, n)``;
5. a single row ``(1, n)``.

Any of 2-5 sets ``metadata["scan_shape_inferred"] = True`` and names the rule in ``scan_shape_source``.

Orientation: frames are returned as RosettaSciIO's ``file_reader`` returns them, so HyperSpy, pyxem and
stempress show the same pattern: det_y flipped from the order Merlin stores the rows in (RosettaSciIO has
done so since pyxem#385, which found the stored order upside down). Frame ``f`` of a stored file holds
``frames[f, ::-1, :]`` of the file's rows. LiberTEM 0.16 (``ctx.load("mib")``) and py4DSTEM's own
``.mib`` reader keep the stored order, so their frames are ours flipped along det_y; ``flip_det_y=False``
gives that stored order. ``metadata["det_y_flipped"]`` records which one a source (and every file written
from it) holds. The copy is lossless either way: the flip only reorders rows.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from stempress.data import mib_raw
from stempress.data.base import SourceBase, check_shape_dtype, checked_scan_shape, require_file
from stempress.errors import StempressError

_MAX_HEADERS = 10_000  # frame headers scanned for timestamps (enough for one line of any real scan)
#: How the default source orients frames, recorded in its metadata (and so in every file written from it).
ORIENTATION = "RosettaSciIO (det_y flipped from the stored order, as HyperSpy and pyxem show it)"


_PIXEL_TYPES = {"U08": np.uint8, "U16": np.uint16, "U32": np.uint32}


@dataclass(frozen=True)
class FrameHeader:
    """One ``MQ1`` frame header (``MQ1,number,header bytes,chips,W,H,type,layout,...``): what a reader of a file
    or of Merlin's TCP stream needs to place and decode the frame that follows it."""

    number: int
    header_bytes: int
    chips: int
    width: int
    height: int
    pixel_type: str
    layout: str
    fields: tuple[str, ...]

    @cached_property
    def raw(self) -> bool:
        """Merlin's raw format (``R64``): chip readout order, decoded by ``data.mib_raw``."""
        return self.pixel_type == "R64"

    @cached_property
    def counter_depth(self) -> int | None:
        """The extended header's counter depth (``MQ1A,time,exposure,depth``), None when absent."""
        if "MQ1A" not in self.fields:
            return None
        at = self.fields.index("MQ1A") + 3
        return _int(self.fields[at].strip()) if at < len(self.fields) else None

    @cached_property
    def shape(self) -> tuple[int, int]:
        """The assembled frame's ``(det_y, det_x)`` (a raw header gives the chips' readout geometry instead)."""
        if self.raw:
            return mib_raw.geometry(self.layout, self.chips, self.counter_depth, (self.width, self.height),
                                    f"frame {self.number}")
        return self.height, self.width

    @cached_property
    def dtype(self) -> np.dtype:
        """The frame's stored dtype (Merlin writes big-endian); a raw frame's decoded native dtype."""
        if self.raw:
            self.shape  # noqa: B018 - refuses a depth or chip layout the raw decoder does not handle
            return mib_raw.dtype(int(self.counter_depth or 0))
        if self.pixel_type not in _PIXEL_TYPES:
            raise StempressError(f"unsupported .mib pixel type {self.pixel_type!r}; expected U08, U16, U32 or R64")
        return np.dtype(_PIXEL_TYPES[self.pixel_type]).newbyteorder(">")

    @cached_property
    def data_bytes(self) -> int:
        if self.raw:
            return mib_raw.data_bytes(self.shape, int(self.counter_depth or 0))
        return self.width * self.height * self.dtype.itemsize

    @cached_property
    def record_bytes(self) -> int:
        """Header plus frame: one record of a ``.mib`` file, one message of Merlin's stream."""
        return self.header_bytes + self.data_bytes


def parse_frame_header(raw: bytes | bytearray, where: str = "frame") -> FrameHeader:
    """The ``MQ1`` header at the start of ``raw`` (at least its header bytes); a corrupt one is refused with a
    one-line StempressError (a file reader stops, a stream receiver counts the frame as corrupt)."""
    if not raw.startswith(b"MQ1,"):
        raise StempressError(f"{where}: no 'MQ1,' frame header; the data is not a Merlin frame or is corrupt")
    lead = raw[:64].decode("ascii", "replace").split(",", 3)  # the header size, so the header is split once
    size = _int(lead[2]) if len(lead) > 2 else None
    fields = (raw[:size].decode("ascii", "replace").rstrip("\x00 ").split(",")
              if size in (384, 768) and len(raw) >= size else [])
    if len(fields) < 8:
        raise StempressError(f"{where}: unreadable .mib frame header (header size {lead[2:3]}); "
                             "the data is corrupt or from an unsupported Merlin version")
    values = [_int(f) for f in fields[1:6]]
    if any(v is None or v < 0 for v in values):
        raise StempressError(f"{where}: unreadable .mib frame header fields {fields[1:6]}; the data is corrupt")
    number, _size, chips, width, height = (int(v) for v in values)  # type: ignore[arg-type]
    return FrameHeader(number, size, chips, width, height, fields[6], fields[7].strip(), tuple(fields))


def decode_frame(header: FrameHeader, payload: bytes | bytearray | memoryview, *,
                 flip_det_y: bool = True, copy: bool = True) -> np.ndarray:
    """The frame after ``header`` as a native-order ``(det_y, det_x)`` array, oriented as ``MibSource`` reads
    it (``flip_det_y``); ``payload`` holds exactly ``header.data_bytes``. Raw (``R64``) frames are assembled
    from the chips' readout order first (``data.mib_raw``), so both formats give the same frame.

    ``copy=False`` gives a view of ``payload`` where the format allows (binary frames: big-endian, det_y
    reversed by strides) for a caller that copies it once anyway (a live receiver, into its scan row): the
    values are the same, only the byte order and the memory differ."""
    if len(payload) != header.data_bytes:
        raise StempressError(f"frame {header.number}: {len(payload)} data bytes, its header says "
                             f"{header.data_bytes}; the frame is short or corrupt")
    if header.raw:
        data = np.frombuffer(payload, np.uint8).reshape(1, -1)
        frame = mib_raw.decode(data, header.shape, int(header.counter_depth or 0))[0]
    else:
        frame = np.frombuffer(payload, header.dtype).reshape(header.height, header.width)
    if flip_det_y:
        frame = frame[::-1]
    if not copy:
        return frame
    return frame.astype(header.dtype.newbyteorder("="), order="C")


def encode_frame(number: int, frame: np.ndarray, *, counter_depth: int | None = None,
                 time: str = "2026-01-01 00:00:00.000000", flip_det_y: bool = True, raw: bool = False,
                 out: bytearray | None = None) -> bytearray:
    """A ``.mib`` record (``MQ1`` header, then big-endian data, or with ``raw`` Merlin's raw ``R64`` chip
    readout at ``counter_depth``) holding ``frame`` as ``MibSource`` returns it (``flip_det_y``), so
    ``decode_frame`` gives ``frame`` back. Raw frames are 256x256 (single chip) or 512x512 (quad, a 768-byte
    header naming 4 chips in layout 2x2, as a Merlin Quad writes it). The record is built in one buffer (a binary
    frame's pixels flipped and made big-endian in one pass): ``out``, the last record of the same size, is reused
    (a sender makes thousands a second, and fresh memory costs more to touch than to fill)."""
    names = {np.dtype(v): k for k, v in _PIXEL_TYPES.items()}
    dtype = np.dtype(frame.dtype).newbyteorder("=")
    if dtype not in names or frame.ndim != 2:
        raise StempressError(f"a Merlin frame is 2-D uint8/16/32, got {frame.dtype} {frame.shape}; "
                             "convert the source to unsigned integer counts")
    height, width = frame.shape
    depth = counter_depth or {1: 6, 2: 12, 4: 24}[dtype.itemsize]
    stored = frame[::-1] if flip_det_y else frame
    chips, layout, select, size, kind = 1, "1x1", "01", 384, names[dtype]
    if raw:
        if depth not in mib_raw.DEPTHS:
            raise StempressError(f"counter depth {depth} has no raw format; choose 1, 6, 12 or 24")
        data = mib_raw.encode(np.asarray(stored)[None], depth)[0]
        width, height = mib_raw.header_size(frame.shape, depth)
        kind = "R64"
        if frame.shape != (mib_raw.CHIP, mib_raw.CHIP):
            chips, layout, select, size = 4, "2x2", "0F", 768
    else:
        data = stored
    head = (f"MQ1,{number:06d},{size:05d},{chips:02d},{width:04d},{height:04d},{kind},{layout:>6},{select},{time},"
            f"0.001000,0,0,0,MQ1A,{time.replace(' ', 'T')}Z,1000000ns,{depth},").encode("ascii")
    record = out if out is not None and len(out) == size + data.nbytes else bytearray(size + data.nbytes)
    record[:size] = head.ljust(size, b"\x00")
    stored_type = data.dtype if raw else dtype.newbyteorder(">")
    np.copyto(np.frombuffer(record, stored_type, offset=size).reshape(data.shape), data, casting="unsafe")
    return record


def _header_fields(path: Path) -> list[str]:
    """The first frame header split on commas (``MQ1,number,header bytes,chips,W,H,type,layout,...``)."""
    with open(path, "rb") as fh:
        head = fh.read(768)
    if not head.startswith(b"MQ1,"):
        raise StempressError(f"{path}: not a Merlin .mib file (no 'MQ1,' frame header at the start)")
    return list(parse_frame_header(head, str(path)).fields)


def counter_depth(fields: list[str], hdr: dict[str, str] | None) -> int | None:
    """Counter depth (1/6/12/24 bits) from the extended header (``MQ1A,time,exposure,depth``) or .hdr."""
    values = []
    if "MQ1A" in fields:
        values += fields[fields.index("MQ1A") + 3 : fields.index("MQ1A") + 4]
    if hdr:
        values.append(hdr.get("Counter Depth (number)", ""))
    for value in values:
        try:
            return int(value.strip())
        except ValueError:
            continue
    return None


def _read_hdr(path: Path) -> dict[str, str] | None:
    """The ``.hdr`` sidecar as a dict, or None when absent or unreadable (it only refines metadata)."""
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    pairs = (line.split("\t", 1) for line in lines if "\t" in line and not line.startswith(("HDR", "End")))
    return {key.rstrip(":").strip(): value.strip() for key, value in pairs}


def _line_length_from_timestamps(headers: np.ndarray, n_frames: int) -> int | None:
    """Frames per scan line from the fly-back gaps in the frame timestamps, or None when not clear."""
    from rsciio.quantumdetector import parse_timestamps  # RosettaSciIO loads only when a .mib is read

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timezone-aware strings: numpy warns and drops the zone
            stamps = [s.strip().rstrip("Z") for s in parse_timestamps(headers, max_index=len(headers))]
            times = np.array(stamps, dtype="datetime64[ns]")
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    diffs = np.diff(times).astype(np.int64).astype(np.float64)
    if diffs.size < 2:
        return None
    above = np.flatnonzero(diffs > diffs.mean())
    if above.size == 0:
        return None
    length = int(above[0]) + 1
    if length >= n_frames or n_frames % length:
        return None
    expected = np.arange(length - 1, diffs.size, length)
    if not np.array_equal(above, expected):
        return None
    typical = np.delete(diffs, expected)
    if typical.size == 0:
        return None
    excess = diffs[expected].min() - np.median(typical)
    jitter = np.abs(typical - np.median(typical)).max()
    return length if excess > 5 * jitter else None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _first(parse: Any, headers: np.ndarray) -> Any:
    """One value parsed from the first header, or None when that firmware does not write it."""
    try:
        return parse(headers, max_index=1)[0]
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


class MibSource(SourceBase):
    """A Merlin ``.mib`` acquisition as ``(scan_y, scan_x, det_y, det_x)`` of native uint8/16/32, oriented as
    RosettaSciIO shows it (``flip_det_y=False``: as stored, as LiberTEM shows it)."""

    def __init__(self, path: str | Path, scan_shape: tuple[int, int] | None = None, *,
                 flip_det_y: bool = True) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.flip_det_y = flip_det_y
        require_file(self.path)
        fields = _header_fields(self.path)
        pixel_type = fields[6]
        if pixel_type != "R64" and pixel_type not in _PIXEL_TYPES:
            raise StempressError(
                f"{self.path}: unknown .mib pixel type {pixel_type!r}; expected U08, U16, U32 or R64"
            )
        hdr = _read_hdr(self.path.with_suffix(".hdr"))
        from rsciio.quantumdetector import parse_exposures, parse_timestamps  # only for a .mib

        self._raw: FrameHeader | None = None  # the first header of a raw (R64) file
        frames, headers = self._raw_records(hdr) if pixel_type == "R64" else self._binary_records(fields, hdr)
        n_frames = len(frames)
        self._frames: np.ndarray | None = frames
        scan, source = self._resolve_scan(scan_shape, n_frames, hdr, headers)
        self.dtype = np.dtype(self._raw.dtype if self._raw else _PIXEL_TYPES[pixel_type])
        det = self._raw.shape if self._raw else frames.shape[1:]
        self.shape = check_shape_dtype((*scan, *det), self.dtype, str(self.path))
        first = headers[:1]
        self.metadata: dict[str, Any] = {
            "format": "mib",
            "file": str(self.path),
            "n_frames": n_frames,
            "scan_shape_inferred": source != "user",
            "scan_shape_source": source,
            "header_bytes": headers.dtype.itemsize,
            "pixel_type": pixel_type,
            "counter_depth": counter_depth(fields, hdr),
            "chips": _int(fields[3]),
            "chip_layout": fields[7].strip(),
            "exposure_ms": _first(parse_exposures, first),
            "timestamp": _first(parse_timestamps, first),
            "det_y_flipped": flip_det_y,
            "orientation": ORIENTATION if flip_det_y else "stored (det_y as in the file, as LiberTEM reads it)",
        }
        if hdr is not None:
            self.metadata["hdr"] = hdr

    def _binary_records(self, fields: list[str], hdr: dict[str, str] | None) -> tuple[np.ndarray, np.ndarray]:
        """RosettaSciIO's memory map of U08/U16/U32 frames and their headers."""
        pixels = (_int(fields[4]) or 0) * (_int(fields[5]) or 0) * np.dtype(_PIXEL_TYPES[fields[6]]).itemsize
        self._check_size(int(fields[2]) + pixels, hdr)
        from rsciio.quantumdetector import load_mib_data

        try:
            return load_mib_data(str(self.path), mmap_mode="r", return_headers=True)  # type: ignore[no-any-return]
        except (RuntimeError, ValueError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise StempressError(
                f"{self.path}: unreadable .mib frame header ({exc}); the file is corrupt"
            ) from exc

    def _raw_records(self, hdr: dict[str, str] | None) -> tuple[np.ndarray, np.ndarray]:
        """Raw (R64) frames, which RosettaSciIO cannot read: a uint8 memory map of whole records (decoded by
        ``data.mib_raw`` a block at a time) and their headers as RosettaSciIO returns them."""
        with open(self.path, "rb") as fh:
            self._raw = parse_frame_header(fh.read(768), str(self.path))
        size = self._raw.record_bytes  # refuses a depth or chip layout the raw decoder does not handle
        self._check_size(size, hdr)
        records = np.memmap(self.path, np.uint8, mode="r").reshape(-1, size)
        head = self._raw.header_bytes
        headers = np.ascontiguousarray(records[:_MAX_HEADERS, :head]).view(f"S{head}").ravel()
        return records, headers

    def _check_size(self, frame: int, hdr: dict[str, str] | None) -> None:
        """Whole ``frame``-byte records only: a partial last frame means a cut-off copy, which we refuse."""
        size = self.path.stat().st_size
        if size and size % frame == 0:
            return
        n_frames = size // frame
        try:
            expected = int(hdr["Frames in Acquisition (Number)"]) if hdr else n_frames + 1
        except (KeyError, ValueError):
            expected = n_frames + 1
        raise StempressError(
            f"{self.path}: file is {size} bytes, not a whole number of {frame}-byte frames "
            f"(expected {expected * frame} bytes for {expected} frames); the file is truncated, "
            "re-copy it"
        )

    def _resolve_scan(self, scan_shape: tuple[int, int] | None, n_frames: int,
                      hdr: dict[str, str] | None, headers: np.ndarray) -> tuple[tuple[int, int], str]:
        if scan_shape is not None:
            sy, sx = checked_scan_shape(scan_shape, n_frames, str(self.path))  # type: ignore[arg-type]
            return (sy, sx), "user"
        try:
            per_trigger = int(hdr["Frames per Trigger (Number)"]) if hdr else 0
        except (KeyError, ValueError):
            per_trigger = 0
        if 1 < per_trigger < n_frames and n_frames % per_trigger == 0:
            return (n_frames // per_trigger, per_trigger), "hdr frames per trigger"
        length = _line_length_from_timestamps(headers[:_MAX_HEADERS], n_frames)
        if length:
            return (n_frames // length, length), "frame timestamps"
        side = math.isqrt(n_frames)
        if side * side == n_frames:
            return (side, side), "square"
        return (1, n_frames), "single row"

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows ``[start, stop)``: a copy in native byte order (only those frames are paged in)."""
        start, stop = self.check_rows(start, stop)
        if self._frames is None:
            raise StempressError(f"{self.path}: source is closed; open it again")
        scan_x = self.shape[1]
        frames = self._frames[start * scan_x : stop * scan_x]
        if self._raw is not None:
            head, depth = self._raw.header_bytes, int(self._raw.counter_depth or 0)
            frames = mib_raw.decode(frames[:, head:], self._raw.shape, depth)
        if self.flip_det_y:
            frames = frames[:, ::-1, :]
        return np.array(frames, dtype=self.dtype, order="C").reshape(stop - start, *self.shape[1:])

    def close(self) -> None:
        """Drop the memory map (the OS unmaps it once no block refers to it)."""
        self._frames = None

    def __reduce__(self) -> tuple[Any, ...]:
        # A memmap would pickle as its whole contents; a worker reopens the file instead.
        return (_reopen, (self.path, self.shape[:2], self.flip_det_y))

    def __repr__(self) -> str:
        return f"MibSource({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def _reopen(path: Path, scan_shape: tuple[int, int], flip_det_y: bool) -> MibSource:
    return MibSource(path, scan_shape, flip_det_y=flip_det_y)
