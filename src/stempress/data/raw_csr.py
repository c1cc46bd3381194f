"""LiberTEM's ``raw_csr`` layout, read: a TOML sidecar naming three flat binary files that form one CSR matrix
(``events.libertem`` writes it).

Rows are scan positions (row-major), columns flat detector pixels (``row * det_x + col``); ``indptr``
has one entry more than there are positions. As LiberTEM's reader does, the file names in the TOML
are taken relative to the TOML's folder, the data section is the one named by ``params.filetype``,
and the three files are memory-mapped with the dtypes the TOML gives. We write ``<i8`` offsets,
``<u4`` pixel indices and the source's own dtype for the counts, so a round trip is bit-exact. A cube
with no electrons at all gets one unreferenced (pixel 0, count 0) entry, because numpy, and so LiberTEM,
cannot memory-map an empty file.

Ours, in tables LiberTEM does not read: ``[stempress.checksums]``, a CRC of each chunk's ``indptr``, ``indices``
and ``data`` bytes (``data.event_checksums``; every read checks the chunks it touches), and the record of
``data.record`` (``[stempress.calibration]``, ``[stempress.provenance]``, ``[stempress.counting]``). Sets
without them (LiberTEM's own, older ones) read as before, and ``metadata["checksums"]`` says ``none``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from stempress.data.base import SourceBase, check_shape_dtype, checked_scan_shape, require_file
from stempress.data.event_checksums import ChunkGuard, EventChecksums
from stempress.data.events import EventBlock, dense_from_events, events_from_hits
from stempress.data.record import TOML_TABLE, read_toml_record
from stempress.errors import StempressError

FILETYPE = "raw_csr"
INDPTR_DTYPE = np.dtype("<i8")
INDICES_DTYPE = np.dtype("<u4")
_KEYS = ("indptr_file", "indptr_dtype", "indices_file", "indices_dtype", "data_file", "data_dtype")
#: The byte parts a chunk's checksums cover, in the order they are checked (indptr first: it locates the rest).
PARTS = ("indptr", "indices", "data")
CHECKSUM_TABLE = (TOML_TABLE, "checksums")


def parts_of(maps: dict[str, np.ndarray]) -> Any:
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
        self.guard = ChunkGuard(_checksums(conf, n, self.path), parts_of(self._maps), str(self.path), self.shape[1])
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
