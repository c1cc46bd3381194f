"""Checksums per chunk of an event file (stempy, raw_csr), checked by every read, so a flipped byte is an error.

Why: an event file has no decoder that fails on corruption. A flipped bit in a pixel index that stays inside the
frame, or in a count, reads back as other valid counts; only a checksum of the bytes as written tells. A chunk is
a run of scan positions (one scan row each, or a few rows each for scans of more than ``MAX_CHUNKS`` rows), so a
problem is named by scan rows, a reader checks only the chunks it reads, and each chunk at most once per open.
Positions, not rows, delimit the chunks, so a raw_csr set read with another scan shape is still checked.

Each format names its byte ``parts`` (raw_csr: ``indptr``, ``indices``, ``data``; stempy: ``lengths`` and
``indices`` of the frame entries) and stores one CRC per part and chunk where its peers' readers do not look.
The algorithm is the HDF5 path's (``data.checksums``: CRC32C where google-crc32c is installed, else CRC32) and
is recorded with the values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stempress.data.checksums import ALGORITHM, checksum_function
from stempress.errors import StempressError

#: Scans up to this many rows get one chunk per scan row; taller scans get runs of rows, so at most this many.
MAX_CHUNKS = 1024

Parts = Mapping[str, Any]  # part name -> bytes-like (an array is checked as its memory)


class ChecksumError(StempressError):
    """Bytes of a chunk of an event file that do not match their checksum, located by scan position."""

    def __init__(self, message: str, chunk: int, positions: tuple[int, int]) -> None:
        super().__init__(message)
        self.chunk, self.positions = chunk, positions

    def __reduce__(self) -> tuple[type[ChecksumError], tuple[str, int, tuple[int, int]]]:
        """Whole where it lands (raised in a worker process): pickling gives an exception its message only, and
        a process pool whose result cannot be read back breaks."""
        return type(self), (str(self), self.chunk, self.positions)


def positions_per_chunk(shape: tuple[int, ...]) -> int:
    """Scan positions per chunk for a cube of ``shape``: whole scan rows, at most ``MAX_CHUNKS`` chunks."""
    rows = max(1, -(-int(shape[0]) // MAX_CHUNKS))
    return rows * int(shape[1])


def _as_bytes(data: Any) -> Any:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    return data


@dataclass
class EventChecksums:
    """One CRC per part and chunk of ``per_chunk`` scan positions (the last chunk may be shorter)."""

    n_positions: int
    per_chunk: int
    crcs: dict[str, np.ndarray]
    algorithm: str = ALGORITHM
    _crc: Callable[[Any], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._crc = checksum_function(self.algorithm)

    @classmethod
    def empty(cls, n_positions: int, per_chunk: int, parts: tuple[str, ...],
              algorithm: str = ALGORITHM) -> EventChecksums:
        """Room for every chunk's checksums, filled by ``record`` as a writer goes."""
        made = cls(n_positions, per_chunk, {}, algorithm)
        made.crcs = {name: np.zeros(made.n_chunks, np.uint32) for name in parts}
        return made

    @classmethod
    def compute(cls, n_positions: int, per_chunk: int, parts: Callable[[int, int], Parts],
                names: tuple[str, ...], algorithm: str = ALGORITHM) -> EventChecksums:
        """Checksums of every chunk, ``parts(first, end)`` giving the bytes of positions ``[first, end)``."""
        made = cls.empty(n_positions, per_chunk, names, algorithm)
        for i in range(made.n_chunks):
            made.record(i, parts(*made.positions(i)))
        return made

    def record(self, chunk: int, parts: Parts) -> None:
        """The checksums of one chunk's bytes."""
        for name, data in parts.items():
            self.crcs[name][chunk] = self.crc(data)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_positions // self.per_chunk)

    def crc(self, data: Any) -> int:
        return int(self._crc(_as_bytes(data)))

    def positions(self, chunk: int) -> tuple[int, int]:
        """Scan positions ``[first, end)`` (row-major) of ``chunk``."""
        first = chunk * self.per_chunk
        return first, min(first + self.per_chunk, self.n_positions)

    def chunks(self, first: int, end: int) -> range:
        """The chunks that positions ``[first, end)`` touch."""
        return range(first // self.per_chunk, -(-end // self.per_chunk)) if end > first else range(0)

    def problem(self, chunk: int, parts: Parts) -> str | None:
        """Which part of ``chunk`` fails its checksum, or None when all match."""
        for name, data in parts.items():
            if name in self.crcs and self.crc(data) != int(self.crcs[name][chunk]):
                return f"{name} bytes of chunk {chunk} fail their {self.algorithm}"
        return None

    def describe(self, scan_x: int) -> str:
        rows = self.per_chunk / scan_x
        size = f"{rows:g} scan row{'s' if rows != 1 else ''}" if rows == int(rows) else f"{self.per_chunk} positions"
        return f"{self.algorithm} of {', '.join(self.crcs)} per {size} ({self.n_chunks} chunks)"

    # -- storage: plain lists and numbers, for TOML tables and HDF5 attributes alike --------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "positions_per_chunk": self.per_chunk,
                **{name: [int(v) for v in values] for name, values in self.crcs.items()}}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any], n_positions: int, parts: tuple[str, ...],
                  where: str) -> EventChecksums:
        """Checksums as ``to_dict`` stored them, refused (one line) when they do not fit the file."""
        try:
            per_chunk = int(stored["positions_per_chunk"])
            made = cls(n_positions, max(1, per_chunk), {}, str(stored["algorithm"]))
            made.crcs = {name: np.asarray(stored[name], np.uint32).reshape(-1) for name in parts}
        except (KeyError, TypeError, ValueError) as exc:
            raise StempressError(f"{where}: the stored checksums are incomplete ({exc}); rewrite the file with "
                                 "stempress") from None
        if per_chunk < 1 or any(v.size != made.n_chunks for v in made.crcs.values()):
            raise StempressError(f"{where}: the stored checksums describe another number of chunks than the file "
                                 "holds; the file was altered after it was written")
        return made


class ChunkGuard:
    """A reader's side: checks each chunk the first time any of its positions is read, and says where it failed.

    ``parts(first, end)`` gives a chunk's bytes from the file; ``checksums`` None means a file written without
    them (read as before, and ``state`` says so).
    """

    def __init__(self, checksums: EventChecksums | None, parts: Callable[[int, int], Parts], where: str,
                 scan_x: int) -> None:
        self.checksums, self.parts, self.where, self.scan_x = checksums, parts, where, scan_x
        self._verified: set[int] = set()

    @property
    def state(self) -> str:
        return "none" if self.checksums is None else self.checksums.describe(self.scan_x)

    def chunk_problem(self, chunk: int, parts: Parts | None = None) -> str | None:
        """Checks one chunk now (verify walks them all); None when it matches or there are no checksums."""
        if self.checksums is None:
            return None
        first, end = self.checksums.positions(chunk)
        problem = self.checksums.problem(chunk, self.parts(first, end) if parts is None else parts)
        if problem is None:
            self._verified.add(chunk)
        return problem

    def pending(self, first: int, end: int) -> list[int]:
        """Chunks touched by positions ``[first, end)`` that have not been checked yet."""
        if self.checksums is None:
            return []
        return [c for c in self.checksums.chunks(first, end) if c not in self._verified]

    def ensure(self, first: int, end: int, parts: Callable[[int, int], Parts] | None = None) -> None:
        """Raise ``ChecksumError`` for the first chunk of positions ``[first, end)`` whose bytes are wrong."""
        for chunk in self.pending(first, end):
            span = self.checksums.positions(chunk)  # type: ignore[union-attr]
            problem = self.chunk_problem(chunk, None if parts is None else parts(*span))
            if problem is not None:
                raise ChecksumError(f"{self.where}: {self.locate(span)}: {problem} (corrupted on disk); the "
                                    "file cannot be trusted: restore it from a copy or write it again", chunk, span)

    def locate(self, span: tuple[int, int]) -> str:
        """Positions ``[first, end)`` in words a user can look at."""
        (r0, c0), (r1, c1) = divmod(span[0], self.scan_x), divmod(span[1] - 1, self.scan_x)
        if (c0, c1) == (0, self.scan_x - 1):
            return f"scan row {r0}" if r0 == r1 else f"scan rows {r0}-{r1}"
        return f"scan positions ({r0}, {c0}) to ({r1}, {c1})"
