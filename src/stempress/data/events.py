"""Counted electrons as events: per scan position, the pixels that saw electrons and how many.

A counted cube is ~99 % zeros, so storing (pixel, count) pairs per scan position (a CSR matrix: rows =
scan positions, columns = flat detector pixels) costs bytes in proportion to the electrons, not to the
detector. This is the layout stempy and LiberTEM exchange, so converting to and from it is lossless
interop, not a reduction. Events are built and consumed block by block of scan rows, like every other
source, so no more than one block's dense frames are ever in memory.

Only non-negative integer data are events: float (binned means, gain-normalised frames), negative
or NaN values are refused, because no count could reproduce them bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from stempress.data.base import (
    Block,
    Dataset4D,
    SourceBase,
    check_shape_dtype,
    iter_blocks,
    row_spans,
    rows_for_budget,
)
from stempress.errors import StempressError

#: Flat pixel indices are stored as uint32 (stempy's and our choice): frames up to 2**32 pixels.
INDEX_DTYPE = np.dtype(np.uint32)
#: Offsets into the event arrays: int64, so a scan may hold more than 2**31 events.
INDPTR_DTYPE = np.dtype(np.int64)


def smallest_unsigned(max_count: int) -> np.dtype:
    """The narrowest unsigned dtype that holds ``max_count`` (uint8 for counted data)."""
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_count <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise StempressError(f"count {max_count} exceeds uint64; the data are not electron counts")


def check_counts_dtype(dtype: np.dtype, where: str) -> None:
    """Refuse dtypes that cannot hold electron counts, before any data is read."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        raise StempressError(
            f"{where}: {dtype} data are not electron counts (events hold non-negative integers); count "
            "electrons first, or store float data with a lossless HDF5 codec (stempress compress)"
        )
    if dtype.kind not in "ui":
        raise StempressError(
            f"{where}: dtype {dtype} is not electron counts; convert the cube to an unsigned integer dtype"
        )


class _CsrCounts:
    """What a CSR of counts (indptr over scan positions, pixel indices, counts) says about itself."""

    shape: tuple[int, int, int, int]
    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray

    @property
    def n_positions(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def frame_size(self) -> int:
        return self.shape[2] * self.shape[3]

    @property
    def n_events(self) -> int:
        """Distinct (position, pixel) pairs that saw electrons."""
        return int(self.indices.size)

    @property
    def n_electrons(self) -> int:
        return int(self.counts.sum(dtype=np.uint64))

    @property
    def max_count(self) -> int:
        return int(self.counts.max()) if self.counts.size else 0

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes + self.counts.nbytes)


@dataclass(frozen=True)
class EventBlock(_CsrCounts):
    """Scan rows ``[start, stop)`` as events; position ``p`` (row-major within the block) holds
    ``indices[indptr[p]:indptr[p+1]]`` (flat pixel ``det_y * det_x_size + det_x``, ascending, unique)
    with ``counts`` (all > 0) at the same places. ``dtype`` is the dense data's, what densifying returns.
    """

    start: int
    shape: tuple[int, int, int, int]  # the block's dense shape: (rows, scan_x, det_y, det_x)
    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray
    dtype: np.dtype

    @property
    def stop(self) -> int:
        return self.start + self.shape[0]

    def positions(self) -> np.ndarray:
        """Block-local scan position of each event (int64), the CSR row index expanded."""
        return np.repeat(np.arange(self.n_positions, dtype=np.int64), np.diff(self.indptr))


def _locate(flat_index: int, shape: tuple[int, ...], start: int) -> str:
    y, x, r, c = (int(v) for v in np.unravel_index(flat_index, shape))
    return f"scan ({start + y}, {x}) pixel ({r}, {c})"


def refuse_non_counts(data: np.ndarray, start: int, where: str) -> None:
    """Float (with or without NaN) and negative values have no event form; say where and what to do."""
    if data.dtype.kind == "f":
        nan = np.isnan(data)
        found = f" (NaN at {_locate(int(np.argmax(nan)), data.shape, start)})" if nan.any() else ""
        raise StempressError(
            f"{where}: {data.dtype} data{found} are not electron counts (events hold non-negative integers); "
            "count electrons first, or store float data with a lossless HDF5 codec (stempress compress)"
        )
    check_counts_dtype(data.dtype, where)
    if data.dtype.kind == "i" and data.size and data.min() < 0:
        k = int(np.argmax(data.reshape(-1) < 0))
        raise StempressError(
            f"{where}: negative value {data.reshape(-1)[k]} at {_locate(k, data.shape, start)} in {data.dtype} "
            "data; events hold electron counts (>= 0): use the uncorrected counts, or store the cube with a "
            "lossless HDF5 codec (stempress compress)"
        )


def _check_frame_size(frame_size: int, where: str) -> None:
    if frame_size > np.iinfo(INDEX_DTYPE).max + 1:
        raise StempressError(f"{where}: frames of {frame_size} pixels exceed uint32 pixel indices; "
                             "bin the detector first")


def events_from_block(block: Block, *, where: str = "data") -> EventBlock:
    """One block of dense scan rows -> its events (bit-exact: ``dense_from_events`` gives it back)."""
    data = np.asarray(block.data)
    if data.ndim != 4:
        raise ValueError(f"block data must be 4-D (rows, scan_x, det_y, det_x), got shape {data.shape}")
    refuse_non_counts(data, block.start, where)
    rows, scan_x, det_y, det_x = (int(n) for n in data.shape)
    n, frame_size = rows * scan_x, det_y * det_x
    _check_frame_size(frame_size, where)
    flat = data.reshape(-1)  # a view for C-ordered blocks, one copy otherwise
    # ascending: position-major, pixel-minor, exactly CSR order; through a mask because numpy's nonzero is ~3x
    # faster on bool than on uint16 (96x96 frames: 12 against 32 us per frame)
    nonzero = np.flatnonzero(flat != 0)
    values = flat[nonzero]
    indptr = np.searchsorted(nonzero, np.arange(n + 1, dtype=np.int64) * frame_size).astype(INDPTR_DTYPE)
    max_count = int(values.max()) if values.size else 0
    return EventBlock(
        start=int(block.start), shape=(rows, scan_x, det_y, det_x), indptr=indptr,
        indices=(nonzero % frame_size).astype(INDEX_DTYPE), counts=values.astype(smallest_unsigned(max_count)),
        dtype=np.dtype(data.dtype),
    )


def events_from_hits(start: int, shape: tuple[int, int, int, int], dtype: np.dtype, positions: np.ndarray,
                     pixels: np.ndarray, counts: np.ndarray | None = None, *, where: str = "events") -> EventBlock:
    """Events from loose hits: block-local ``positions``, flat ``pixels`` and optional ``counts`` (1 each if
    omitted), in any order, repeats summed and zeros dropped, so foreign files read as canonical events."""
    rows, scan_x, det_y, det_x = (int(v) for v in shape)
    n, frame_size = rows * scan_x, det_y * det_x
    _check_frame_size(frame_size, where)
    positions = np.asarray(positions).astype(np.int64, copy=False)
    pixels = np.asarray(pixels)
    if pixels.size and (pixels.min() < 0 or pixels.max() >= frame_size):
        bad = pixels[(pixels < 0) | (pixels >= frame_size)][0]
        raise StempressError(f"{where}: pixel index {bad} outside a {det_y}x{det_x} frame; the file is corrupt "
                             "or its frame shape is wrong")
    if counts is not None:
        counts = np.asarray(counts)
        check_counts_dtype(counts.dtype, where)
        if counts.size and counts.min() < 0:
            raise StempressError(f"{where}: negative count {counts.min()}; events hold electron counts (>= 0)")
    key = positions * frame_size + pixels.astype(np.int64, copy=False)
    steps = np.diff(key)
    if counts is None or (steps.size and steps.min() <= 0):  # bare, unsorted or repeated hits: sum them up
        if counts is None:
            key, summed = np.unique(key, return_counts=True)
        else:
            order = np.argsort(key, kind="stable")
            key, counts = key[order], counts[order]
            first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else np.zeros(0, np.int64)
            summed = np.add.reduceat(counts.astype(np.uint64), first) if key.size else np.zeros(0, np.uint64)
            key = key[first]
        counts = summed
    if counts.size and counts.min() == 0:
        keep = counts > 0
        key, counts = key[keep], counts[keep]
    max_count = int(counts.max()) if counts.size else 0
    indptr = np.searchsorted(key, np.arange(n + 1, dtype=np.int64) * frame_size).astype(INDPTR_DTYPE)
    return EventBlock(start=int(start), shape=(rows, scan_x, det_y, det_x), indptr=indptr,
                      indices=(key % frame_size).astype(INDEX_DTYPE),
                      counts=counts.astype(smallest_unsigned(max_count)), dtype=np.dtype(dtype))


def dense_from_events(event_block: EventBlock, shape: tuple[int, ...] | None = None,
                      dtype: np.dtype | str | None = None) -> np.ndarray:
    """Events -> the dense block, ``shape`` (default the block's) filled with zeros and the counts."""
    shape = event_block.shape if shape is None else tuple(int(v) for v in shape)
    if len(shape) < 2 or int(np.prod(shape[:-2])) != event_block.n_positions \
            or shape[-2] * shape[-1] != event_block.frame_size:
        raise ValueError(f"shape {shape} does not hold {event_block.n_positions} positions of "
                         f"{event_block.frame_size} pixels")
    dtype = np.dtype(event_block.dtype if dtype is None else dtype)
    check_counts_dtype(dtype, "dense_from_events")
    if event_block.max_count > np.iinfo(dtype).max:
        raise StempressError(f"counts up to {event_block.max_count} do not fit {dtype}; read them as a wider "
                             "dtype (uint32)")
    out = np.zeros(event_block.n_positions * event_block.frame_size, dtype=dtype)
    out[event_block.positions() * event_block.frame_size + event_block.indices] = event_block.counts
    return out.reshape(shape)


@runtime_checkable
class EventReader(Protocol):
    """A source that can hand out events directly, skipping a dense round trip (event files, ``Events``)."""

    def read_events(self, start: int, stop: int) -> EventBlock: ...


def iter_events(source: Dataset4D, rows: int | None = None) -> Iterator[EventBlock]:
    """Walk a source top to bottom as events, ``rows`` scan rows at a time (default: a dense-memory budget).

    The dtype is checked now, so a float source fails before anything is read or written.
    """
    check_counts_dtype(source.dtype, source.name)
    rows = rows or rows_for_budget(source)
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    return _walk(source, rows)


def _walk(source: Dataset4D, rows: int) -> Iterator[EventBlock]:
    """An event reader's own events, else the dense blocks of ``iter_blocks`` made events."""
    if isinstance(source, EventReader):
        for start, stop in row_spans(source.shape[0], rows):
            yield source.read_events(start, stop)
    else:
        for block in iter_blocks(source, rows):
            yield events_from_block(block, where=source.name)


@dataclass(frozen=True)
class Events(_CsrCounts):
    """A whole cube's events in memory: bytes grow with the electrons (plus 8 per scan position)."""

    shape: tuple[int, int, int, int]
    dtype: np.dtype
    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_blocks(cls, blocks: Iterable[EventBlock], shape: tuple[int, int, int, int],
                    dtype: np.dtype) -> Events:
        """Concatenate consecutive blocks that cover ``shape``'s scan rows from the top."""
        indptrs, indices, counts = [np.zeros(1, INDPTR_DTYPE)], [], []
        offset, next_row = 0, 0
        for block in blocks:
            if block.start != next_row or block.shape[1:] != tuple(shape[1:]):
                raise ValueError(f"block at row {block.start} with shape {block.shape} does not continue "
                                 f"row {next_row} of a {tuple(shape)} cube")
            indptrs.append(block.indptr[1:] + offset)
            indices.append(block.indices)
            counts.append(block.counts)
            offset += block.n_events
            next_row = block.stop
        if next_row != shape[0]:
            raise ValueError(f"blocks cover {next_row} of {shape[0]} scan rows")
        count_dtype = np.result_type(np.uint8, *(c.dtype for c in counts))
        return cls(shape=tuple(int(v) for v in shape), dtype=np.dtype(dtype),  # type: ignore[arg-type]
                   indptr=np.concatenate(indptrs),
                   indices=np.concatenate(indices) if indices else np.zeros(0, INDEX_DTYPE),
                   counts=np.concatenate(counts).astype(count_dtype, copy=False) if counts
                   else np.zeros(0, np.uint8))

    @classmethod
    def from_source(cls, source: Dataset4D, rows: int | None = None) -> Events:
        """Read a whole source into events, one dense block at a time."""
        return cls.from_blocks(iter_events(source, rows), source.shape, source.dtype)

    def block(self, start: int, stop: int) -> EventBlock:
        """Scan rows ``[start, stop)`` as an ``EventBlock`` (views, no copy of the events)."""
        scan_x = self.shape[1]
        ptr = self.indptr[start * scan_x : stop * scan_x + 1]
        return EventBlock(start=start, shape=(stop - start, *self.shape[1:]), indptr=ptr - ptr[0],
                          indices=self.indices[ptr[0] : ptr[-1]], counts=self.counts[ptr[0] : ptr[-1]],
                          dtype=self.dtype)


@dataclass
class EventsSource(SourceBase):
    """``Events`` presented as a ``Dataset4D``: every sink reads events exactly like a dense file."""

    events: Events
    name: str = "events"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = check_shape_dtype(self.events.shape, self.events.dtype, self.name)
        self.dtype = np.dtype(self.events.dtype)

    @property
    def max_count(self) -> int:
        return self.events.max_count

    def read_events(self, start: int, stop: int) -> EventBlock:
        start, stop = self.check_rows(start, stop)
        return self.events.block(start, stop)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return dense_from_events(self.read_events(start, stop))


def as_source(data: Dataset4D | Events) -> Dataset4D:
    """Writers take either a source or in-memory ``Events``; both read the same way from here on."""
    if isinstance(data, Events):
        return EventsSource(data)
    if isinstance(data, Dataset4D):
        return data
    raise TypeError(f"expected a Dataset4D or Events, got {type(data).__name__}")
