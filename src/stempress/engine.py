"""The engine: ``run(source, sinks, executor, progress)``, the only code that walks a source.

Two ways through a run, chosen here, never by a command:

- **partitions**: when every sink merges on this executor (reducers, statistics, reference digests; the archive
  writer on remote workers, ``merges_on``), the executor has several workers and the source can be reopened
  or shared, the scan rows are cut into partitions; each worker reads its own rows into partial sinks, which
  merge in row order (bit-identical for any worker count; the archive's chunks written in grid order).
- **one stream**: otherwise (an archive on threads, an event file, or a live stream), blocks are read once,
  ahead of the sinks by a thread, and every sink consumes each block in row order; a writer sink spreads its
  own work (compressing chunks) over the run's executor. A streaming source (a live detector) is paced per
  sink (``stream_lanes``): sinks taking any rows (reducers, snapshots) get each block as it arrives, the archive
  its whole chunk rows, joined from the same blocks.

Either way every byte of the source is read once, whatever the number of sinks.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from stempress.data.base import DEFAULT_BLOCK_BYTES, Block, Dataset4D, block_rows, check_shape_dtype, iter_blocks
from stempress.data.open import SourceSpec, spec_of
from stempress.data.stream import Regrouper, StreamSource
from stempress.errors import StempressError, require_distinct_names
from stempress.exec.base import Executor, in_flight_for
from stempress.exec.local import InlineExecutor
from stempress.exec.prefetch import read_ahead
from stempress.progress import PartsProgress, Progress, ProgressCounter
from stempress.sinks.protocol import MergeableSink, RunInfo, Sink, abort, merges_on, observe, row_multiple

#: Largest partition: small enough that many fit a run (load balance), large enough to amortise reopening.
PARTITION_BYTES = 256 * 1024**2
#: Partitions per worker, so a slow partition does not leave the other workers idle at the end.
PARTITIONS_PER_WORKER = 4


# -- rows per block: data.base.block_rows, the one rule -------------------------------------------------
def sinks_multiple(sinks: Sequence[Sink]) -> int:
    """The row multiple every sink can take: the least common multiple of theirs."""
    return math.lcm(*(row_multiple(s) for s in sinks)) if sinks else 1


def sinks_budget(sinks: Sequence[Sink], workers: int) -> int:
    """Block bytes: the default, or more when a sink needs work for every worker in one block."""
    asked = [int(getattr(s, "block_bytes_per_worker", 0)) * workers for s in sinks]
    return max([DEFAULT_BLOCK_BYTES, *asked])


# -- reading -----------------------------------------------------------------------------------------------
def read_blocks(source: Dataset4D, rows: int, start: int = 0, stop: int | None = None, *,
                depth: int = 1) -> Iterator[Block]:
    """``iter_blocks`` over ``[start, stop)``, read ``depth`` blocks ahead by a thread."""
    return read_ahead(iter_blocks(source, rows, start, stop), depth)


def partition_ranges(scan_y: int, parts: int, multiple: int = 1) -> list[tuple[int, int]]:
    """At most ``parts`` contiguous, near-equal, non-empty row ranges whose edges fall on ``multiple``."""
    if parts < 1:
        raise StempressError(f"partitions must be >= 1, got {parts}")
    units = math.ceil(scan_y / multiple)
    k = min(int(parts), units)
    edges = sorted({min(scan_y, round(i * units / k) * multiple) for i in range(k + 1)})
    return list(itertools.pairwise(edges))


def partitions_for(source: Dataset4D, workers: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Enough partitions for every worker several times over, none above ``PARTITION_BYTES``."""
    total = int(np.prod(source.shape)) * np.dtype(source.dtype).itemsize
    return partition_ranges(source.shape[0], max(PARTITIONS_PER_WORKER * workers,
                                                 math.ceil(total / PARTITION_BYTES)), multiple)


# -- running -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def closing_iterator(blocks: Iterator[Block]) -> Iterator[Iterator[Block]]:
    """Close a generator of blocks here, in this thread, however the run ends. Left suspended (a sink raised), it
    would be finalized by the garbage collector at any moment in any thread, and its cleanup (a decoder pool's
    shutdown joins threads) could then run inside another thread's start and deadlock it, as a test once did."""
    try:
        yield blocks
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def run(source: Dataset4D | StreamSource, sinks: Sequence[Sink], *, executor: Executor | None = None,
        progress: Progress | None = None, rows: int | None = None, read_ahead_blocks: int = 1) -> list[Any]:
    """Feed every block of ``source`` to every sink once; returns each sink's ``finish()`` in order.

    ``executor`` (default inline) decides where work runs; ``progress(bytes_done, bytes_total)`` counts the
    source's raw bytes consumed; ``rows`` overrides the rows per block (rounded to what the sinks need). On
    failure or Ctrl-C every sink is aborted (partial outputs removed) and the error raised.
    """
    sinks = list(sinks)
    require_distinct_names([s.name for s in sinks], "sinks", "give at least one sink (an archive, events or "
                           "reducers)", "give each a distinct name")
    owned = executor is None
    executor = executor if executor is not None else InlineExecutor()
    shape = check_shape_dtype(tuple(source.shape), np.dtype(source.dtype), source.name)
    # the source's own metadata, not a copy: a generator fills some in while producing (clipped counts)
    info = RunInfo(source.name, shape, np.dtype(source.dtype), source.metadata, (0, shape[0]), executor)
    counter = ProgressCounter(progress, int(np.prod(shape)) * info.dtype.itemsize)
    opened: list[Sink] = []
    try:
        for sink in sinks:
            opened.append(sink)  # before open: a sink stopped halfway through opening (Ctrl-C) still cleans up
            sink.open(info)
        multiple = sinks_multiple(sinks)  # known once the sinks are open (an archive's chunks depend on the cube)
        step = block_rows(shape, info.dtype, multiple=multiple, rows=rows,
                          budget=sinks_budget(sinks, executor.workers))
        if _can_partition(source, sinks, executor):
            _run_partitions(source, sinks, info, executor, step, multiple, counter)  # type: ignore[arg-type]
        elif isinstance(source, Dataset4D):  # blocks already on every sink's multiple: one lane, as read
            with closing_iterator(read_blocks(source, step, depth=read_ahead_blocks)) as blocks:
                _run_stream(blocks, [_Lane(sinks, 1, shape[0], executor)], info, executor, counter)
        else:
            with closing_iterator(source.blocks()) as blocks:
                _run_stream(blocks, stream_lanes(sinks, shape[0], executor), info, executor, counter)
        return [sink.finish() for sink in sinks]
    except BaseException:
        for sink in opened:
            with contextlib.suppress(Exception):  # one sink failing to clean up must not spare the others
                abort(sink)
        raise
    finally:
        if owned:
            executor.close()


class _Lane:
    """Sinks fed one granularity of a stream: blocks joined to ``multiple`` rows (1: each block as it comes). The
    mergeable ones (with several local workers) take each block as a partial on a worker; ``done``: bytes through
    every sink of the lane (an offloaded partial's once merged)."""

    def __init__(self, sinks: Sequence[Sink], multiple: int, scan_y: int, executor: Executor) -> None:
        self.sinks = list(sinks)
        self.offload = ([s for s in self.sinks if merges_on(s, executor)]  # type: ignore[misc]
                        if executor.workers > 1 and not executor.remote else [])
        self.inline = [s for s in self.sinks if s not in self.offload]
        self.joining = Regrouper(multiple, scan_y)
        self.done = 0


def stream_lanes(sinks: Sequence[Sink], scan_y: int, executor: Executor) -> list[_Lane]:
    """A stream's sinks by the rows they need: those taking any rows (reducers, snapshots, events) get each block
    as soon as it arrives, so a live preview fills row by row; those needing whole chunk rows (the archive) get
    the blocks joined to the least common multiple of theirs, exactly the blocks (and joins) a single pace gave."""
    fine = [s for s in sinks if row_multiple(s) == 1]
    coarse = [s for s in sinks if row_multiple(s) > 1]
    return [_Lane(group, sinks_multiple(group), scan_y, executor) for group in (fine, coarse) if group]


def _run_stream(blocks: Iterator[Block], lanes: Sequence[_Lane], info: RunInfo, executor: Executor,
                counter: ProgressCounter) -> None:
    """Every block to every sink, in row order, each lane's sinks at its own granularity. With several workers, the
    mergeable sinks (reducers) take each block as a partial on a worker while the writer sinks work on this thread
    (and spread their own work over the same executor); the partials merge in row order, so results equal a
    one-thread pass. Progress counts the bytes through every lane."""
    pending: deque[tuple[Future[list[MergeableSink]], _Lane, int]] = deque()
    reported = 0

    def report() -> None:
        nonlocal reported
        done = min(lane.done for lane in lanes)
        if done > reported:
            counter.add(done - reported)
            reported = done

    def settle(limit: int) -> None:
        # beyond the bound, wait; below it, take what is done already, so progress (a live stream's lag) follows
        # the work instead of trailing by the blocks in flight until more arrive
        while pending and (len(pending) > limit or pending[0][0].done()):
            future, lane, nbytes = pending.popleft()
            for sink, part in zip(lane.offload, future.result(), strict=True):
                sink.merge(part)
            lane.done += nbytes

    def feed(lane: _Lane, block: Block) -> None:
        if lane.offload:
            parts = [s.partial((block.start, block.stop)) for s in lane.offload]
            pending.append((executor.submit(_consume_parts, parts, info.for_rows(block.start, block.stop), block),
                            lane, block.data.nbytes))
        for sink in lane.inline:
            sink.consume(block)
        for sink in lane.offload:
            observe(sink, block)
        if not lane.offload:
            lane.done += block.data.nbytes

    offloading = any(lane.offload for lane in lanes)
    for block in blocks:
        for lane in lanes:
            joined = lane.joining.add(block)
            if joined is not None:
                feed(lane, joined)
        if offloading:
            settle(in_flight_for(executor.workers))
        report()
    for lane in lanes:  # a stream that ended short of a multiple
        rest = lane.joining.flush()
        if rest is not None:
            feed(lane, rest)
    settle(0)
    report()


def _consume_parts(parts: list[MergeableSink], info: RunInfo, block: Block) -> list[MergeableSink]:
    for part in parts:
        part.open(info)
        part.consume(block)
    return parts


def _can_partition(source: Any, sinks: Sequence[Sink], executor: Executor) -> bool:
    if executor.workers < 2 or not isinstance(source, Dataset4D) or source.shape[0] < 2:
        return False
    if not all(merges_on(s, executor) for s in sinks):
        return False
    return not executor.remote or spec_of(source) is not None


def _run_partitions(source: Dataset4D, sinks: Sequence[MergeableSink], info: RunInfo, executor: Executor,
                    step: int, multiple: int, counter: ProgressCounter) -> None:
    ranges = partitions_for(source, executor.workers, multiple)
    where: Dataset4D | SourceSpec = spec_of(source) if executor.remote else source  # type: ignore[assignment]
    local = None if executor.remote else counter
    remote = PartsProgress(counter)  # remote partitions: bytes done per partition, from inside it where it can
    with executor.progress_link(remote.update) if executor.remote else contextlib.nullcontext(None) as link:
        tasks = (_PartitionTask(where, info.for_rows(*r), [s.partial(r) for s in sinks], step, local, (i, link))
                 for i, r in enumerate(ranges))
        for i, (parts, nbytes) in enumerate(executor.map_ordered(_run_partition, tasks)):
            for sink, part in zip(sinks, parts, strict=True):
                sink.merge(part)
            if executor.remote:
                remote.update(i, nbytes)


class _PartitionTask:
    """One partition's work, picklable when its source is a ``SourceSpec`` and it carries no counter (a remote
    task reports through ``link``: its partition's index and the executor's picklable ``link(part, done)``)."""

    def __init__(self, source: Dataset4D | SourceSpec, info: RunInfo, parts: list[MergeableSink], step: int,
                 counter: ProgressCounter | None, link: tuple[int, Any] = (0, None)) -> None:
        self.source, self.info, self.parts, self.step, self.counter = source, info, parts, step, counter
        self.index, self.link = link


def _run_partition(task: _PartitionTask) -> tuple[list[MergeableSink], int]:
    """Worker: open the partition's sinks, feed them its rows, hand them back to be merged."""
    reopened = isinstance(task.source, SourceSpec)
    source = task.source.open() if reopened else task.source
    nbytes = 0
    try:
        for part in task.parts:
            part.open(task.info)
        start, stop = task.info.row_range
        with closing_iterator(read_blocks(source, task.step, start, stop, depth=0)) as blocks:
            for block in blocks:
                for part in task.parts:
                    part.consume(block)
                nbytes += block.data.nbytes
                if task.counter is not None:
                    task.counter.add(block.data.nbytes)
                elif task.link is not None:
                    task.link(task.index, nbytes)
        return task.parts, nbytes
    finally:
        if reopened:
            source.close()
