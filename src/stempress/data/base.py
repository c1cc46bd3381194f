"""The one shape every source has: a 4-D cube read a few scan rows at a time.

Sinks (writers, reducers, statistics) only ever see blocks of whole scan rows, shaped
``(rows, scan_x, det_y, det_x)``, so a cube larger than memory flows through in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from stempress.errors import StempressError

#: Dtypes the toolkit handles end to end (detector counts and binned means).
SUPPORTED_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "int8", "int16", "int32",
                                                "float32", "float64", "uint64", "int64"))

#: Default memory budget for one block when the caller gives no row count: below glibc's largest mmap threshold
#: (32 MiB), so a freed block's memory is reused for the next one instead of being mapped and faulted in again
#: (``benchmarks/scale_out.py`` prints the page faults per GB of each run).
DEFAULT_BLOCK_BYTES = 24 * 1024**2


@dataclass(frozen=True)
class Block:
    """Scan rows ``[start, stop)`` of a cube; ``data`` has shape ``(stop-start, scan_x, det_y, det_x)``.

    A file's blocks are complete; a live stream's may not be: ``valid`` (shape ``(rows, scan_x)``, None = all)
    marks the positions whose frame arrived, and ``frame_ids`` (same shape, None = position order) the
    detector's frame numbers, so every sink sees what a stream lost instead of zeros posing as data.
    """

    start: int
    data: np.ndarray
    valid: np.ndarray | None = None
    frame_ids: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        return self.valid is None or bool(np.all(self.valid))

    @property
    def stop(self) -> int:
        return self.start + self.data.shape[0]

    def without_missing(self) -> Block:
        """The block with the frames it marks missing set to 0 (a copy; the block itself when complete): whatever
        fill value stands in for them adds nothing to a sum (the mean pattern) or a count (events)."""
        if self.complete:
            return self
        data = self.data.copy()
        data[~np.asarray(self.valid, bool)] = 0
        return Block(self.start, data, self.valid, self.frame_ids)


@runtime_checkable
class Dataset4D(Protocol):
    """What every source offers. ``read_rows`` is the only way data leaves a source."""

    name: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    metadata: dict[str, Any]

    def read_rows(self, start: int, stop: int) -> np.ndarray: ...

    def close(self) -> None: ...


def check_shape_dtype(shape: tuple[int, ...], dtype: np.dtype, where: str) -> tuple[int, int, int, int]:
    """Refuse what no sink can handle, naming the fix, before any work starts."""
    if len(shape) != 4:
        raise StempressError(
            f"{where}: data has {len(shape)} dimensions {tuple(shape)}, expected 4 "
            "(scan_y, scan_x, det_y, det_x); give --scan-shape for a frame stack or pick a 4-D dataset"
        )
    if any(int(n) <= 0 for n in shape):
        raise StempressError(f"{where}: shape {tuple(shape)} has an empty dimension; nothing to process")
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        raise StempressError(
            f"{where}: dtype {np.dtype(dtype)} is not supported; convert to one of "
            + ", ".join(str(d) for d in SUPPORTED_DTYPES)
        )
    return tuple(int(n) for n in shape)  # type: ignore[return-value]


def require_file(path: Path) -> Path:
    """A missing input is the commonest user error: say so in one line before any reader tries it."""
    if not path.is_file():
        raise StempressError(f"{path}: no such file; check the path")
    return path


def checked_scan_shape(scan_shape: tuple[int, int], n_frames: int, where: str) -> tuple[int, int]:
    """A user's scan shape for a stack of frames: its product must be the frame count."""
    sy, sx = (int(v) for v in scan_shape)
    if sy * sx != n_frames:
        raise StempressError(
            f"{where}: scan shape {sy}x{sx} = {sy * sx} positions but there are {n_frames} frames; "
            f"give a --scan-shape whose product is {n_frames}"
        )
    return sy, sx


def row_nbytes(source: Dataset4D) -> int:
    """Bytes in one scan row of frames."""
    _, scan_x, det_y, det_x = source.shape
    return scan_x * det_y * det_x * np.dtype(source.dtype).itemsize


def nbytes(source: Dataset4D) -> int:
    """Bytes of the whole dense cube."""
    return source.shape[0] * row_nbytes(source)


def block_rows(shape: Sequence[int], dtype: np.dtype | str, *, multiple: int = 1, budget: int | None = None,
               rows: int | None = None) -> int:
    """The one rows-per-block rule: ``rows`` if given (rounded up to ``multiple``), else what fits ``budget``
    bytes (default ``DEFAULT_BLOCK_BYTES``) rounded down to ``multiple``, at least one multiple, at most the scan."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    multiple = max(1, int(multiple))
    if rows is not None:
        if int(rows) < 1:
            raise StempressError(f"rows per block must be at least 1, got {rows}")
        chosen = -(-int(rows) // multiple) * multiple
    else:
        chosen = max(1, int(budget or DEFAULT_BLOCK_BYTES) // max(1, row_bytes))
        chosen = max(multiple, chosen // multiple * multiple)
    return min(chosen, int(shape[0]))


def rows_for_budget(source: Dataset4D, budget_bytes: int = DEFAULT_BLOCK_BYTES, multiple: int = 1) -> int:
    """Scan rows per block of ``source`` that fit the budget, rounded down to a multiple (``block_rows``)."""
    return block_rows(source.shape, source.dtype, multiple=multiple, budget=budget_bytes)


def row_spans(stop: int, rows: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """``(first, last)`` of each block of a walk over scan rows ``[start, stop)`` in blocks of ``rows`` (the last
    may be shorter): how ``iter_blocks`` cuts a source, and how an event reader's walk (``data.events``) does."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    for first in range(start, stop, rows):
        yield first, min(first + rows, stop)


def iter_blocks(source: Dataset4D, rows: int | None = None, start: int = 0, stop: int | None = None) -> Iterator[Block]:
    """Walk scan rows ``[start, stop)`` of a source (default: all) in blocks of ``rows`` (the last may be shorter);
    a block of the wrong shape is the source's bug, named as such."""
    rows = rows or rows_for_budget(source)
    stop = source.shape[0] if stop is None else stop
    for first, last in row_spans(stop, rows, start):
        data = source.read_rows(first, last)
        if data.shape != (last - first, *source.shape[1:]):
            raise StempressError(f"source {source.name!r} returned a block of shape {data.shape} for rows "
                                 f"{first}..{last}; fix the source's read_rows")
        yield Block(first, data)


class SourceBase:
    """Plumbing every source shares: context manager and the row-range check."""

    shape: tuple[int, int, int, int]

    def check_rows(self, start: int, stop: int) -> tuple[int, int]:
        """Out-of-range rows are a programming error, not a user error."""
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.shape[0]:
            raise ValueError(f"rows [{start}, {stop}) outside [0, {self.shape[0]})")
        return start, stop

    def close(self) -> None:
        """Nothing to release unless a source holds a file."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ArraySource(SourceBase):
    """An in-memory cube (numpy array or anything array-like that slices along axis 0)."""

    array: np.ndarray
    name: str = "array"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = check_shape_dtype(self.array.shape, self.array.dtype, self.name)
        self.dtype = np.dtype(self.array.dtype)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = self.check_rows(start, stop)
        return np.asarray(self.array[start:stop])
