"""The one sink protocol: ``open(info)``, ``consume(block)``, ``finish() -> result``; ``abort()`` on failure.

A sink whose work over disjoint scan rows combines (reducers, statistics, reference digests) is a
``MergeableSink``: ``partial(rows)`` gives a fresh, picklable sink for one partition, which a worker opens and
feeds, and ``merge(part)`` absorbs it; parts merge in row order, so results are bit-identical for any number of
workers. Sinks that own one output file (the archive writer, the event writers) consume blocks in row order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from stempress.data.base import Block
from stempress.exec.base import Executor


@dataclass(frozen=True)
class RunInfo:
    """What a sink learns before the first block: the cube, the rows it will see and the run's executor (for
    sinks that split a block's work, as the archive writer compresses chunks on every worker)."""

    name: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    metadata: dict[str, Any] = field(default_factory=dict)
    rows: tuple[int, int] | None = None
    executor: Executor | None = None

    @property
    def row_range(self) -> tuple[int, int]:
        return self.rows if self.rows is not None else (0, self.shape[0])

    def for_rows(self, start: int, stop: int) -> RunInfo:
        """The same run seen by a partition (no executor: a partition's sinks run in their worker)."""
        return replace(self, rows=(int(start), int(stop)), executor=None)


@runtime_checkable
class Sink(Protocol):
    """Consumes every block of a run once. ``row_multiple``: blocks start on multiples of it (an HDF5 chunk's
    scan rows, an entropy chunk's), so a sink never has to hold rows back."""

    name: str

    def open(self, info: RunInfo) -> None: ...

    def consume(self, block: Block) -> None: ...

    def finish(self) -> Any: ...


@runtime_checkable
class MergeableSink(Sink, Protocol):
    """A sink whose partial results over disjoint row ranges merge."""

    def partial(self, rows: tuple[int, int]) -> MergeableSink: ...

    def merge(self, other: MergeableSink) -> None: ...


def merges_on(sink: Sink, executor: Executor) -> bool:
    """Whether ``sink`` takes partitions on ``executor``: a mergeable sink may merge only on some (the archive
    writer on remote workers, where reading and compressing move to them); default everywhere."""
    if not isinstance(sink, MergeableSink):
        return False
    method = getattr(sink, "merges_on", None)
    return bool(method(executor)) if callable(method) else True


def row_multiple(sink: Sink) -> int:
    return max(1, int(getattr(sink, "row_multiple", 1)))


def abort(sink: Sink) -> None:
    """Drop what a sink had begun (a partial output file), for sinks that have anything to drop."""
    method = getattr(sink, "abort", None)
    if callable(method):
        method()


def observe(sink: Sink, block: Block) -> None:
    """A mergeable sink's cheap in-order work (a streaming digest) while its partials take the block elsewhere."""
    method = getattr(sink, "observe", None)
    if callable(method):
        method(block)
