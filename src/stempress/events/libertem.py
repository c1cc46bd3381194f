"""LiberTEM's ``raw_csr`` layout: a TOML sidecar naming three flat binary files that form one CSR matrix.

Rows are scan positions (row-major), columns flat detector pixels (``row * det_x + col``); ``indptr``
has one entry more than there are positions. As LiberTEM's reader does, the file names in the TOML
are taken relative to the TOML's folder, the data section is the one named by ``params.filetype``,
and the three files are memory-mapped with the dtypes the TOML gives. We write ``<i8`` offsets,
``<u4`` pixel indices and the source's own dtype for the counts, so a round trip is bit-exact. A cube
with no electrons at all gets one unreferenced (pixel 0, count 0) entry, because numpy, and so LiberTEM,
cannot memory-map an empty file.

Ours, in tables LiberTEM does not read: ``[stempress.checksums]``, a CRC of each chunk's ``indptr``, ``indices``
and ``data`` bytes (``events.checksums``; every read checks the chunks it touches), and the record of
``events.record`` (``[stempress.calibration]``, ``[stempress.provenance]``, ``[stempress.counting]``). Sets
without them (LiberTEM's own, older ones) read as before, and ``metadata["checksums"]`` says ``none``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import numpy as np

from stempress.atomic import atomic_output, discard, writing
from stempress.data.base import Dataset4D, SourceBase, check_shape_dtype, checked_scan_shape, require_file
from stempress.errors import StempressError
from stempress.events.checksums import ChunkGuard, EventChecksums, positions_per_chunk
from stempress.events.record import TOML_TABLE, Record, event_record, read_toml_record, record_toml, toml_table
from stempress.events.representation import (
    EventBlock,
    Events,
    as_source,
    check_counts_dtype,
    dense_from_events,
    events_from_hits,
    iter_events,
)

FILETYPE = "raw_csr"
INDPTR_DTYPE = np.dtype("<i8")
INDICES_DTYPE = np.dtype("<u4")
_KEYS = ("indptr_file", "indptr_dtype", "indices_file", "indices_dtype", "data_file", "data_dtype")
#: The byte parts a chunk's checksums cover, in the order they are checked (indptr first: it locates the rest).
PARTS = ("indptr", "indices", "data")
CHECKSUM_TABLE = (TOML_TABLE, "checksums")


def raw_csr_files(toml_path: str | Path) -> dict[str, Path]:
    """Where ``write_raw_csr`` puts the three binary files: beside the TOML, named after it."""
    toml_path = Path(toml_path)
    stem = toml_path.with_suffix("")
    return {part: stem.with_name(f"{stem.name}.{part}.bin") for part in ("indptr", "indices", "data")}


def _toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def _sidecar(shape: tuple[int, int, int, int], files: dict[str, Path], data_dtype: np.dtype) -> str:
    names = {part: _toml_string(path.name) for part, path in files.items()}
    return "\n".join([
        "# LiberTEM raw_csr sidecar written by stempress: a CSR matrix, rows = scan positions (row-major),",
        "# columns = flat detector pixels (row * det_x + col); file names are relative to this file.",
        "[params]",
        f'filetype = "{FILETYPE}"',
        f"nav_shape = [{shape[0]}, {shape[1]}]",
        f"sig_shape = [{shape[2]}, {shape[3]}]",
        "",
        f"[{FILETYPE}]",
        f"indptr_file = {names['indptr']}",
        f'indptr_dtype = "{INDPTR_DTYPE.str}"',
        f"indices_file = {names['indices']}",
        f'indices_dtype = "{INDICES_DTYPE.str}"',
        f"data_file = {names['data']}",
        f'data_dtype = "{data_dtype.str}"',
        "",
    ])


def write_raw_csr(source: Dataset4D | Events, toml_path: str | Path, *, force: bool = False,
                  rows: int | None = None, record: Record | None = None) -> Path:
    """Write a counted cube (or its events) as LiberTEM raw_csr, one block of scan rows at a time.

    All four files are written under temporary names and renamed only when every one is complete
    (the TOML last), so a failure leaves none of them, and no existing file is replaced without
    ``force``. ``record`` (default: the source's calibration and provenance) goes into the TOML.
    """
    src = as_source(source)
    check_counts_dtype(src.dtype, src.name)
    events = iter_events(src, rows)  # refuses a float source before any file is created
    record = event_record(src, FILETYPE) if record is None else record
    return write_raw_csr_events(events, toml_path, src.shape, src.dtype, force=force, record=record)


def require_toml_name(toml_path: str | Path) -> Path:
    """A raw_csr set is named by its TOML sidecar: refuse any other name before anything is written."""
    toml_path = Path(toml_path)
    if toml_path.suffix.lower() != ".toml":
        raise StempressError(f"{toml_path}: the raw_csr sidecar must be a .toml file; give a name like scan.toml")
    return toml_path


def write_raw_csr_events(events: Iterable[EventBlock], toml_path: str | Path, shape: tuple[int, int, int, int],
                         dtype: Any, *, force: bool = False, record: Record | None = None) -> Path:
    """Write consecutive event blocks (seen once, top to bottom) as raw_csr, atomically like ``write_raw_csr``,
    with the checksums of every chunk and ``record`` (if given) in the TOML."""
    with writing(Path(toml_path)), RawCsrWriter(toml_path, shape, dtype, force=force) as writer:
        for block in events:
            writer.append(block)
        return writer.close(record)


class RawCsrWriter:
    """raw_csr written as event blocks arrive: ``append`` each block in row order, then ``close`` once.

    Push, not pull, so a sink of the engine writes it while the engine reads (no thread, no second pass). The
    four files are written under temporary names from the start and renamed by ``close``, the TOML last;
    ``abort`` (or leaving the ``with`` block without ``close``) deletes them, so a failure leaves none.
    """

    def __init__(self, toml_path: str | Path, shape: tuple[int, int, int, int], dtype: Any, *,
                 force: bool = False) -> None:
        self.path = require_toml_name(toml_path)
        self.shape = tuple(int(v) for v in shape)
        self.files = raw_csr_files(self.path)
        self.data_dtype = np.dtype(dtype).newbyteorder("<")
        self._outputs: ExitStack | None = ExitStack()
        self._handles = ExitStack()
        try:
            self._tmp_toml = self._outputs.enter_context(atomic_output(self.path, force=force))  # last
            self._tmp = {part: self._outputs.enter_context(atomic_output(path, force=force))
                         for part, path in self.files.items()}
            self._fh = {part: self._handles.enter_context(open(self._tmp[part], "wb"))  # noqa: SIM115 (closed by close/abort)
                        for part in PARTS}
            self._fh["indptr"].write(np.zeros(1, INDPTR_DTYPE).tobytes())
        except BaseException:
            self.abort()
            raise
        self._offset = 0
        self._next_row = 0

    def append(self, block: EventBlock) -> None:
        """The next scan rows' events (``block.start`` continues the last block)."""
        if block.start != self._next_row or tuple(block.shape[1:]) != self.shape[1:]:
            raise ValueError(f"event block at row {block.start} with shape {block.shape} does not continue row "
                             f"{self._next_row} of a {self.shape} cube")
        self._fh["indptr"].write((block.indptr[1:] + self._offset).astype(INDPTR_DTYPE).tobytes())
        self._fh["indices"].write(block.indices.astype(INDICES_DTYPE, copy=False).tobytes())
        self._fh["data"].write(block.counts.astype(self.data_dtype).tobytes())
        self._offset += block.n_events
        self._next_row = block.stop

    def close(self, record: Record | None = None) -> Path:
        """Checksums and ``record`` into the TOML, then every file gets its name (the TOML last)."""
        if self._outputs is None:
            raise StempressError(f"{self.path}: the raw_csr writer was already closed or aborted")
        if self._next_row != self.shape[0]:
            raise StempressError(f"{self.path}: events for {self._next_row} of {self.shape[0]} scan rows were "
                                 "written; a raw_csr set must cover the whole scan")
        if self._offset == 0:  # numpy (so LiberTEM) cannot map an empty file: one value no position points at
            self._fh["indices"].write(np.zeros(1, INDICES_DTYPE).tobytes())
            self._fh["data"].write(np.zeros(1, self.data_dtype).tobytes())
        self._handles.close()
        dtypes = {"indptr": INDPTR_DTYPE, "indices": INDICES_DTYPE, "data": self.data_dtype}
        maps = {part: np.memmap(self._tmp[part], dtypes[part], "r") for part in PARTS}  # the bytes as on disk
        sums = EventChecksums.compute(self.shape[0] * self.shape[1], positions_per_chunk(self.shape),
                                      _parts_of(maps), PARTS)
        text = _sidecar(self.shape, self.files, self.data_dtype) + toml_table(CHECKSUM_TABLE, sums.to_dict())
        outputs, self._outputs = self._outputs, None
        try:
            self._tmp_toml.write_text(text + (record_toml(record) if record else ""), encoding="utf-8")
        except BaseException:
            discard(outputs)
            raise
        outputs.close()
        return self.path

    def abort(self) -> None:
        """Delete the partial files (nothing of the set appears); never raises over the error that led here."""
        with suppress(OSError):  # a full disk fails the last flush of files about to be deleted anyway
            self._handles.close()
        if self._outputs is not None:
            outputs, self._outputs = self._outputs, None
            discard(outputs)

    def __enter__(self) -> RawCsrWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # a no-op after close


def _parts_of(maps: dict[str, np.ndarray]) -> Any:
    """``parts(first, end)``: the bytes of scan positions ``[first, end)`` in the three files (a corrupt indptr
    gives clipped, wrong slices, which its own checksum has already flagged)."""

    def parts(first: int, end: int) -> dict[str, np.ndarray]:
        ptr = maps["indptr"][first:end + 1]
        size = maps["indices"].size
        lo = min(max(int(ptr[0]), 0), size) if ptr.size else 0
        hi = min(max(int(ptr[-1]), lo), size) if ptr.size else 0
        return {"indptr": ptr, "indices": maps["indices"][lo:hi], "data": maps["data"][lo:hi]}

    return parts


def _map(path: Path, dtype: np.dtype, what: str, toml_path: Path) -> np.ndarray:
    """A read-only map of a flat file (numpy cannot map an empty file: an empty array stands in)."""
    if not path.is_file():
        raise StempressError(f"{toml_path}: {what} {path} not found; keep the binary files beside the TOML")
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise StempressError(f"{toml_path}: {what} {path.name} has {size} bytes, not a whole number of {dtype} "
                             "values; the file is truncated or its dtype is wrong")
    return np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)


def _dtype(section: dict[str, Any], key: str, toml_path: Path) -> np.dtype:
    try:
        dtype = np.dtype(section[key])
    except TypeError as exc:
        raise StempressError(f"{toml_path}: {key} = {section[key]!r} is not a numpy dtype; write e.g. \"<u4\"") \
            from exc
    if dtype.kind not in "ui":
        raise StempressError(f"{toml_path}: {key} is {dtype}; stempress reads raw_csr of integer counts only "
                             "(load float data with LiberTEM)")
    return dtype


def _shape(params: dict[str, Any], key: str, toml_path: Path) -> tuple[int, ...]:
    value = params.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise StempressError(f"{toml_path}: [params] {key} = {value!r} is not a list of positive integers; "
                             f"write e.g. {key} = [256, 256]")
    return tuple(value)


def _checksums(conf: dict[str, Any], n_positions: int, where: Path) -> EventChecksums | None:
    """The sidecar's ``[stempress.checksums]``, or None for a set written without them."""
    ours = conf.get(CHECKSUM_TABLE[0])
    table = ours.get(CHECKSUM_TABLE[1]) if isinstance(ours, dict) else None
    return None if table is None else EventChecksums.from_dict(table, n_positions, PARTS, str(where))


class RawCsrSource(SourceBase):
    """A LiberTEM raw_csr set as a ``Dataset4D``, memory-mapped: a block reads only its rows' events.

    ``scan_shape`` reshapes the scan (its product must equal the TOML's nav size), e.g. for a 1-D nav.
    """

    def __init__(self, toml_path: str | Path, scan_shape: tuple[int, int] | None = None) -> None:
        self.path = Path(toml_path)
        self.name = self.path.stem
        require_file(self.path)
        try:
            with open(self.path, "rb") as fh:
                conf = tomllib.load(fh)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise StempressError(f"{self.path}: not a readable TOML file ({' '.join(str(exc).split())}); "
                                 "give the raw_csr sidecar") from exc
        params = conf.get("params")
        filetype = params.get("filetype") if isinstance(params, dict) else None
        if not isinstance(filetype, str) or filetype.lower() != FILETYPE:
            raise StempressError(f"{self.path}: [params] filetype is {filetype!r}, not \"raw_csr\"; "
                                 "give a LiberTEM raw_csr sidecar")
        section = conf.get(filetype, conf.get(FILETYPE))
        missing = [k for k in _KEYS if not isinstance(section, dict) or k not in section]
        if missing:
            raise StempressError(f"{self.path}: [{filetype}] lacks {', '.join(missing)}; the sidecar is incomplete")
        nav, sig = _shape(params, "nav_shape", self.path), _shape(params, "sig_shape", self.path)
        n = int(np.prod(nav))
        if scan_shape is not None:
            nav = checked_scan_shape(scan_shape, n, str(self.path))
        if len(nav) != 2 or len(sig) != 2:
            raise StempressError(f"{self.path}: nav_shape {list(nav)} and sig_shape {list(sig)} must be 2-D; give "
                                 "scan_shape for a 1-D nav")
        base = self.path.parent
        self.files = {part: base / section[f"{part}_file"] for part in ("indptr", "indices", "data")}
        indptr_dtype, indices_dtype, data_dtype = (_dtype(section, f"{p}_dtype", self.path)
                                                   for p in ("indptr", "indices", "data"))
        self._indptr = _map(self.files["indptr"], indptr_dtype, "indptr_file", self.path)
        self._indices = _map(self.files["indices"], indices_dtype, "indices_file", self.path)
        self._data = _map(self.files["data"], data_dtype, "data_file", self.path)
        if self._indptr.size != n + 1:
            raise StempressError(f"{self.path}: indptr holds {self._indptr.size} offsets, {n + 1} expected for "
                                 f"{n} scan positions; the files are truncated or nav_shape is wrong")
        if self._indices.size != self._data.size:
            raise StempressError(f"{self.path}: {self._indices.size} indices but {self._data.size} values; "
                                 "the files are truncated or do not belong together")
        if not 0 <= int(self._indptr[0]) <= int(self._indptr[-1]) <= self._indices.size:
            raise StempressError(f"{self.path}: indptr runs from {self._indptr[0]} to {self._indptr[-1]} but "
                                 f"there are {self._indices.size} values; the files are truncated")
        self.dtype = data_dtype.newbyteorder("=")
        self.shape = check_shape_dtype((*nav, *sig), self.dtype, str(self.path))
        self._maps = {"indptr": self._indptr, "indices": self._indices, "data": self._data}
        self.guard = ChunkGuard(_checksums(conf, n, self.path), _parts_of(self._maps), str(self.path), self.shape[1])
        self.metadata: dict[str, Any] = {
            "format": "raw_csr", "file": str(self.path), "files": {k: str(v) for k, v in self.files.items()},
            "indptr_dtype": indptr_dtype.str, "indices_dtype": indices_dtype.str, "data_dtype": data_dtype.str,
            "checksums": self.guard.state, **read_toml_record(conf),
        }

    def read_events(self, start: int, stop: int) -> EventBlock:
        """Scan rows ``[start, stop)`` as events, straight from the maps (canonicalised if a writer was loose)."""
        start, stop = self.check_rows(start, stop)
        if self._indptr is None:
            raise StempressError(f"{self.path}: source is closed; open it again")
        scan_x = self.shape[1]
        self.guard.ensure(start * scan_x, stop * scan_x)
        ptr = np.asarray(self._indptr[start * scan_x : stop * scan_x + 1]).astype(np.int64)
        steps = np.diff(ptr)
        if (steps.size and steps.min() < 0) or ptr[-1] > self._indices.size:
            raise StempressError(f"{self.path}: indptr is not increasing or overruns the values near scan row "
                                 f"{start}; the file is corrupt")
        lo, hi = int(ptr[0]), int(ptr[-1])
        positions = np.repeat(np.arange(steps.size, dtype=np.int64), steps)
        return events_from_hits(start, (stop - start, *self.shape[1:]), self.dtype, positions,
                                np.asarray(self._indices[lo:hi]), np.asarray(self._data[lo:hi]),
                                where=str(self.path))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return dense_from_events(self.read_events(start, stop))

    def close(self) -> None:
        self._indptr = self._indices = self._data = None  # type: ignore[assignment]
        self._maps.clear()
