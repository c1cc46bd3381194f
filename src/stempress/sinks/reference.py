"""Checks as sinks: a stored cube against its source bit for bit, and its decoded chunks against their CRCs.

Why sinks: whatever walks a cube (``verify`` reading a stored file, or a writer's own pass over the source) runs
them through ``engine.run`` like any other output, so the comparison needs no loop of its own and can sit beside
an archive writer in the same read. Both stop the run at the first problem (``CheckFailed``, a one-line
``StempressError`` naming the scan position), since a file wrong in one place is wrong; both merge, so the
engine may check blocks on its workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stempress.codecs.parallel import chunk_pieces, full_chunk
from stempress.data.base import Block, Dataset4D
from stempress.data.checksums import ChunkChecksums
from stempress.errors import StempressError
from stempress.exec.base import Executor
from stempress.sinks.protocol import RunInfo


@dataclass(frozen=True)
class Problem:
    """The first thing found wrong, located in the scan: rows and columns are half-open ranges."""

    kind: str  # "stored" (bytes on disk), "decoded" (decoder or raw CRC), "differs" (vs the source), "shape"
    reason: str
    rows: tuple[int, int] | None = None
    cols: tuple[int, int] | None = None
    chunk: tuple[int, ...] | None = None

    def where(self) -> str:
        if self.rows is None or self.cols is None:
            return "the whole cube"
        (r0, r1), (c0, c1) = self.rows, self.cols
        if r1 - r0 == 1 and c1 - c0 == 1:
            return f"scan position ({r0}, {c0})"
        chunk = f" (chunk {self.chunk})" if self.chunk is not None else ""
        rows = f"scan row {r0}" if r1 - r0 == 1 else f"scan rows {r0}-{r1 - 1}"
        return f"{rows}, columns {c0}-{c1 - 1}{chunk}"

    @classmethod
    def at_chunk(cls, index: tuple[int, ...], chunks: tuple[int, ...], shape: tuple[int, ...], kind: str,
                 reason: str) -> Problem:
        """A problem with one HDF5 chunk, located by the scan rows and columns the chunk covers."""
        r0, c0 = index[0] * chunks[0], index[1] * chunks[1]
        return cls(kind, reason, (r0, min(r0 + chunks[0], shape[0])), (c0, min(c0 + chunks[1], shape[1])),
                   tuple(int(i) for i in index))


class CheckFailed(StempressError):
    """A check sink found ``problem``; the run stops there."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(f"{problem.where()}: {problem.reason}")
        self.problem = problem

    def __reduce__(self) -> tuple[type[CheckFailed], tuple[Problem]]:
        """Rebuilt from its problem where it lands (raised in a worker process): pickling gives an exception
        its message only, which this ``__init__`` cannot take, and a pool whose result cannot be read breaks."""
        return type(self), (self.problem,)


def shape_problem(src: Dataset4D | None, shape: tuple[int, ...], dtype: np.dtype) -> Problem | None:
    """A source of another shape or dtype cannot be compared; when only its scan is cut differently, say how to
    read it as the file's."""
    if src is None or (tuple(src.shape) == tuple(shape) and np.dtype(src.dtype) == dtype):
        return None
    fix = "compare with the source it came from"
    same_frames = tuple(src.shape[2:]) == tuple(shape[2:]) and np.dtype(src.dtype) == dtype
    if same_frames and src.shape[0] * src.shape[1] == shape[0] * shape[1]:
        fix = f"if it is the same scan cut differently, read the source with --scan-shape {shape[0]}x{shape[1]}"
    return Problem("shape", f"the source {src.name!r} is {tuple(src.shape)} {np.dtype(src.dtype)}, the file holds "
                            f"{tuple(shape)} {np.dtype(dtype)}; {fix}")


def _bits(array: np.ndarray) -> np.ndarray:
    """Bit patterns as unsigned integers: NaN equals the same NaN, -0.0 differs from 0.0."""
    array = np.ascontiguousarray(array)
    return array.view(f"u{array.dtype.itemsize}")


def compare(block: Block, reference: Dataset4D) -> Problem | None:
    """First scan position where the block and the reference's rows differ, with one differing pixel's values."""
    want = np.asarray(reference.read_rows(block.start, block.stop))
    got_bits, want_bits = _bits(block.data), _bits(want.astype(block.data.dtype, copy=False))
    differs = (got_bits != want_bits).reshape(*got_bits.shape[:2], -1).any(axis=2)
    if not differs.any():
        return None
    y, x = (int(v) for v in np.argwhere(differs)[0])
    pixel = int(np.flatnonzero(got_bits[y, x].reshape(-1) != want_bits[y, x].reshape(-1))[0])
    qy, qx = divmod(pixel, block.data.shape[3])
    row = block.start + y
    reason = (f"differs from the source {reference.name!r}: detector pixel ({qy}, {qx}) is "
              f"{block.data[y, x, qy, qx].item()!r} in the file, {want[y, x, qy, qx].item()!r} in the source")
    return Problem("differs", reason, (row, row + 1), (x, x + 1))


class ReferenceCheckSink:
    """Every block equal, bit for bit, to the same scan rows read from ``reference``; ``finish()`` gives the
    scan rows compared. Blocks are checked on the engine's workers (threads: the reference is shared)."""

    name = "reference check"

    def __init__(self, reference: Dataset4D) -> None:
        self.reference = reference
        self.rows = 0

    def open(self, info: RunInfo) -> None:
        problem = shape_problem(self.reference, info.shape, info.dtype)
        if problem is not None:
            raise CheckFailed(problem)

    def consume(self, block: Block) -> None:
        problem = compare(block, self.reference)
        if problem is not None:
            raise CheckFailed(problem)
        self.rows += block.data.shape[0]

    def finish(self) -> int:
        return self.rows

    def partial(self, rows: tuple[int, int]) -> ReferenceCheckSink:
        return ReferenceCheckSink(self.reference)

    def merge(self, other: Any) -> None:
        self.rows += other.rows

    def merges_on(self, executor: Executor) -> bool:
        """Not on remote workers: an open reference does not travel."""
        return not executor.remote


class DecodedCheckSink:
    """Every block of a stored cube decoded; with the cube's ``ChunkChecksums``, each chunk's decoded bytes
    (edge chunks padded with ``fillvalue``, as HDF5 stores them) checked against their recorded CRC.
    ``finish()`` gives the scan rows seen."""

    name = "decoded check"

    def __init__(self, record: ChunkChecksums | None = None, chunks: tuple[int, ...] | None = None,
                 fillvalue: Any = 0) -> None:
        if record is not None and chunks is None:
            raise ValueError("checking chunk CRCs needs the chunk shape")
        self.record, self.chunks, self.fillvalue = record, chunks, fillvalue
        self.row_multiple = chunks[0] if chunks else 1
        self.rows = 0
        self.shape: tuple[int, ...] = ()

    def open(self, info: RunInfo) -> None:
        self.shape = info.shape

    def consume(self, block: Block) -> None:
        if self.record is not None:
            chunks: tuple[int, ...] = self.chunks  # type: ignore[assignment]
            for index, _offset, piece in chunk_pieces(block.start, block.data, chunks):
                reason = self.record.check_chunk(index, raw=full_chunk(piece, chunks, self.fillvalue))
                if reason is not None:
                    raise CheckFailed(Problem.at_chunk(index, chunks, self.shape, "decoded", reason))
        self.rows += block.data.shape[0]

    def finish(self) -> int:
        return self.rows

    def partial(self, rows: tuple[int, int]) -> DecodedCheckSink:
        return DecodedCheckSink(self.record, self.chunks, self.fillvalue)

    def merge(self, other: Any) -> None:
        self.rows += other.rows
