"""Events as a sink: the event file (stempy, raw_csr or entropy-coded) written while the engine reads, so
``stempress count`` and ``stempress ingest --events`` share one writer.

Blocks are counts already (``params`` None: a counting detector, another event file) or integrating frames,
counted here with ``CountingParams`` on the run's executor (a block's frames split among its workers: counting
never links frames, so any split gives the same counts). Each block's events are appended at once to a raw_csr
set staged in a partial folder beside the output (``events.libertem.RawCsrWriter``); at ``finish`` the staged set
becomes the output (raw_csr), or is converted to stempy (which needs the largest count first) or entropy-coded
(whose model is fitted on all counts): whatever the format, the frames are read and counted once. The outputs
appear whole (``atomic_output``) or not at all: ``abort`` deletes every partial file and the staging folder.

Entropy-coded: the model's first pass (the mean pattern: the tally's; the sampled positions' features:
``events.entropy_file.ModelFit``) is taken from the blocks as they pass, so at ``finish`` the staged counts are read
once to group the positions (as events, no dense frames) and once to code them (densified), straight from the
staged maps (``StagedCounts``). The file is the one ``write_entropy_events`` writes from the same counts, byte for
byte.

A live stream (the receiver's source: its metadata carries the ``frames`` accounting) is entropy-coded while it is
received instead (``fit="prefix"``, ``events.entropy_stream``): the model is fitted on the first scan rows and
each chunk is coded once its rows are in, so the end of the scan leaves one chunk to code rather than the whole
scan (issue #14). Nothing is staged then; the events are the same, the file's
``provenance.entropy_model`` names the model. Files at rest keep the whole-scan model. The chunks are coded on
``coder``, worker processes the caller owns (``stempress live``: one, from ``stream_coder``),
else on the run's executor when it is worker processes, else in the thread that consumes the blocks: the sink
starts no pool of its own (``events.entropy_stream`` says why and who does).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.atomic import atomic_output, check_new_output, discard, partial_folder, writing
from stempress.cores import resolve_workers
from stempress.data.base import Block
from stempress.data.events import (
    EventBlock,
    check_counts_dtype,
    dense_from_events,
    events_from_block,
    refuse_non_counts,
)
from stempress.data.raw_csr import RawCsrSource
from stempress.data.stempy import METADATA as STEMPY_METADATA
from stempress.errors import StempressError
from stempress.events.counting import (
    OUT_DTYPE,
    CountingParams,
    CountReport,
    CountTally,
    check_frames,
    count_frames,
    count_warnings,
    counting_description,
    counting_record,
    event_format,
)
from stempress.events.libertem import RawCsrWriter, raw_csr_files
from stempress.events.record import event_record
from stempress.events.stempy import MAX_AUTO_FRAMES_PER_POSITION, write_stempy
from stempress.exec.base import Executor
from stempress.exec.local import InlineExecutor
from stempress.exec.processes import ProcessExecutor, local_processes
from stempress.sinks.protocol import RunInfo

#: A stempy file this many times the size of the raw_csr set of the same counts, and at least this many bytes
#: larger (small files are mostly HDF5 overhead), is worth a warning.
STEMPY_SIZE_WARNING = 2.0
STEMPY_SIZE_WARNING_BYTES = 1024**2
#: Frame bytes per worker in one block when counting, so every worker has frames to count in each block.
COUNT_BYTES_PER_WORKER = 8 * 1024**2


@contextlib.contextmanager
def stream_coder(wanted: bool = True, cores: int | None = None) -> Iterator[ProcessExecutor | None]:
    """One worker process to code a live stream's entropy chunks (``ProcessExecutor(1)``), for the command that
    owns the pass (``stempress live``) to hand to ``receive(event_coder=)``; closed on exit, whatever ended the
    pass. None (code in the receiving process) when not ``wanted`` or with fewer than two ``cores`` (the command's
    workers, default every usable core): on one core a process gains nothing and costs a copy of every chunk. Why a
    process and who owns it: ``events.entropy_stream``."""
    if not wanted or resolve_workers(cores) < 2:
        yield None
        return
    with ProcessExecutor(1) as coder:
        yield coder


class EventSink:
    """Writes the blocks it consumes as the event file ``out`` (format ``fmt``, else named by ``out``'s suffix as
    ``events.counting.event_format`` says), counting them first with ``params`` when given.

    ``rows``: scan rows per block of the stempy conversion; ``inputs``: stored in the counting record as given.
    ``fit`` (entropy): ``"scan"``, the model of the whole scan, coded at ``finish``; ``"prefix"``, the model of the
    first scan rows, chunks (``chunk_rows`` rows, default the codec's) coded as their rows come; None: prefix for
    a live stream, else scan. ``coder``: worker processes (``ProcessExecutor``, the caller's: left open) that code a
    prefix model's chunks, default the run's executor when it is one, else the consuming thread.
    ``finish`` returns a ``CountReport``. One file, written in row order: on threads it consumes every block; on a
    remote executor it merges ``CountedRows`` partitions (counted where they are read) in row order.
    """

    name = "events"

    def __init__(self, out: str | Path, params: CountingParams | None = None, *, fmt: str | None = None,
                 force: bool = False, rows: int | None = None, inputs: Mapping[str, str] | None = None,
                 name: str = "events", fit: str | None = None, chunk_rows: int | None = None,
                 coder: Executor | None = None) -> None:
        self.out, self.params, self.force, self.rows, self.name = Path(out), params, force, rows, name
        self.fmt = event_format(self.out, fmt)
        self.inputs = dict(inputs) if inputs else None
        if fit not in (None, "scan", "prefix"):
            raise ValueError(f"fit must be 'scan' (model from the whole scan), 'prefix' (from its first rows, coded "
                             f"as the rows come) or None (prefix for a live stream), got {fit!r}")
        self.fit, self.chunk_rows, self.coder = fit, chunk_rows, coder
        self.targets = [self.out, *raw_csr_files(self.out).values()] if self.fmt == "raw_csr" else [self.out]
        for path in self.targets:
            check_new_output(path, force)  # before the pass, not after it
        self._stack: contextlib.ExitStack | None = None
        self._writer: RawCsrWriter | None = None
        self._fit: Any = None  # events.entropy_file.ModelFit, for the entropy format
        self._stream: Any = None  # events.entropy_stream.StreamedEntropy, for the entropy format of a stream

    def open(self, info: RunInfo) -> None:
        """Check the references against the detector and the dtype, then claim the outputs and the staging."""
        # the run's description of the source (name, shape, dtype, metadata) is what the record and the warnings
        # read; the counts made of it are described the same way
        self.source = info
        if self.params is not None:
            self.params.resolved(info.shape[2:])  # wrong reference shapes fail before any frame is read
            self.counts = replace(info, name=f"{info.name}-counted", dtype=OUT_DTYPE, metadata={
                **info.metadata, "counting": counting_description(self.params, info.name, info.dtype)})
            self.block_bytes_per_worker = COUNT_BYTES_PER_WORKER
        else:
            check_counts_dtype(info.dtype, info.name)
            self.counts = self.source
        self.executor: Executor = info.executor or InlineExecutor()
        self.tally = CountTally(info.shape[2:])
        live = "frames" in info.metadata  # the live receiver's accounting: a stream being received
        prefix = self.fmt == "entropy" and (self.fit == "prefix" or (self.fit is None and live))
        if self.fmt == "entropy" and not prefix:
            from stempress.events.entropy_file import ModelFit  # the codec loads only when used

            self._fit = ModelFit(info.shape)
        self.max_input: float | None = None
        #: a live stream's positions whose frame never arrived (their fill frames hold no events): the record says so
        self.received: np.ndarray | None = np.ones(info.shape[:2], bool) if "frames" in info.metadata else None
        stack = contextlib.ExitStack()
        try:
            self._tmp = {path: stack.enter_context(atomic_output(path, force=self.force))
                         for path in self.targets}
            if prefix:  # coded as the rows come: nothing to stage
                from stempress.events.entropy_stream import StreamedEntropy

                coder = self.coder if self.coder is not None else self.executor
                self._stream = StreamedEntropy(self._tmp[self.out], info.shape, self.counts.dtype,
                                               chunk_rows=self.chunk_rows,
                                               executor=coder if isinstance(coder, ProcessExecutor) else None)
                self._stack = stack
                return
            staging = stack.enter_context(partial_folder(self.out))  # a killed run's leftover is known as such
            self._writer = RawCsrWriter(staging / self.out.with_suffix(".toml").name, info.shape, self.counts.dtype)
        except BaseException:
            discard(stack)
            raise
        self._stack = stack

    def consume(self, block: Block) -> None:
        if block.valid is not None:
            if self.received is None:
                self.received = np.ones(self.source.shape[:2], bool)
            self.received[block.start:block.stop] = block.valid
        # a missing frame's fill value is never counted
        if self._stream is not None:  # coded from the dense counts: no events to extract
            counts, top = dense_counts(block.without_missing(), self.params, self.source.name, self._count)
            self.tally.add(counts)
            self._top(top)
            with writing(self.out):
                self._stream.add(block.start, counts)
            return
        events, top, counts = counted_events(block.without_missing(), self.params, self.source.name,
                                             self.counts.name, self.tally, self._count)
        if self._fit is not None:
            self._fit.sample(block.start * self.source.shape[1], counts)
        self._append([events], top)

    def _top(self, top: float | None) -> None:
        if top is not None:
            self.max_input = top if self.max_input is None else max(self.max_input, top)

    def _append(self, events: list[EventBlock], top: float | None) -> None:
        self._top(top)
        assert self._writer is not None
        with writing(self.out):  # the staged set's writes happen here, outside its atomic_output block
            for each in events:
                self._writer.append(each)

    # -- partitions, on a remote executor (Dask, processes) ------------------------------------------------
    def merges_on(self, executor: Executor) -> bool:
        """Partitions only where workers are other processes: each counts its own rows (read where it runs) and
        sends back events, not frames; on threads, blocks stream and their frames are split among the workers."""
        return bool(executor.remote)

    def partial(self, rows: tuple[int, int]) -> CountedRows:
        return CountedRows(self.params, self.source.name, self.counts.name, self.source.shape[2:])

    def merge(self, part: CountedRows) -> None:
        """A partition's events appended in row order (partitions arrive in row order), its tally added."""
        if self._stream is not None:
            self._top(part.max_input)
            for each in part.events:
                self._stream.add(each.start, dense_from_events(each))
        else:
            if self._fit is not None:
                for each in part.events:
                    self._fit.sample(each.start * self.source.shape[1], dense_from_events(each))
            self._append(part.events, part.max_input)
        self.tally.merge(part.tally)

    def _count(self, frames: np.ndarray) -> np.ndarray:
        """The block's frames counted on the run's workers, in pieces of whole frames, joined in order."""
        workers = self.executor.workers
        flat = frames.reshape(-1, *frames.shape[-2:])
        if workers < 2 or flat.shape[0] < 2:
            return count_frames(frames, self.params)  # type: ignore[arg-type]
        step = -(-flat.shape[0] // workers)
        pieces = [flat[i:i + step] for i in range(0, flat.shape[0], step)]
        counted = self.executor.map_ordered(functools.partial(count_frames, params=self.params), pieces)
        return np.concatenate(list(counted)).reshape(frames.shape)

    def finish(self) -> CountReport:
        """The record and warnings (known now: they need every count), then the output from the staged set."""
        try:
            with writing(self.out):
                return self._finish()
        except BaseException:
            self.abort()
            raise

    def _finish(self) -> CountReport:
        assert self._stack is not None
        record = event_record(self.counts, self.fmt)  # type: ignore[arg-type]
        if self.received is not None:  # a stream's accounting: missing positions are no events, not empty frames
            record["provenance"]["frames"] = {**self.source.metadata.get("frames", {}),
                                              "missing_positions": np.flatnonzero(~self.received).tolist()}
        warnings: list[str] = []
        if self.params is not None:
            record["counting"] = counting_record(self.counts.metadata["counting"], self.source.shape, self.tally,
                                                 self.inputs)
            warnings += count_warnings(self.source, self.params, self.tally, self.max_input)  # type: ignore[arg-type]
        else:
            from stempress.data.open import scan_shape_note

            warnings += [n for n in (scan_shape_note(self.source),) if n is not None]  # type: ignore[arg-type]
        out = self._tmp[self.out]
        if self._stream is not None:
            record["provenance"]["entropy_model"] = self._stream.provenance
            self._stream.finish(record)
            return self._report(warnings, record)
        assert self._writer is not None
        staged = self._writer.close(record if self.fmt == "raw_csr" else None)
        if self.fmt == "raw_csr":
            for path, partial in self._tmp.items():  # atomic_output renames them, the TOML last
                os.replace(staged.parent / path.name, partial)
        elif self.fmt == "stempy":
            self._write_stempy(staged, out, record)
            warnings += _stempy_size_warning(self.out, out, staged)
        else:
            from stempress.events.entropy_file import write_entropy_events  # the codec loads only when used

            # the run's process executor codes the chunks; on threads or inline, this process (GIL-bound coder:
            # processes of our own would import the caller's main module, which a library call must not need)
            with local_processes(1, self.executor) as pool, StagedCounts(staged) as events:
                model = self._fit.model(self.tally.pattern, events)
                write_entropy_events(events, out, force=True, record=record, executor=pool, model=model)
        return self._report(warnings, record)

    def _report(self, warnings: list[str], record: dict[str, Any]) -> CountReport:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        stack.close()  # the staging folder goes, the outputs get their names
        tally = self.tally
        return CountReport(path=self.out, format=self.fmt, files=list(self.targets), shape=self.source.shape,
                           n_events=tally.n_events, n_electrons=tally.n_electrons,
                           record=record.get("counting", {}) if self.params is not None else {},
                           warnings=warnings, counted=self.params is not None)

    def _write_stempy(self, staged: Path, out: Path, record: dict[str, Any]) -> None:
        largest = self.tally.max_count
        if largest > MAX_AUTO_FRAMES_PER_POSITION:  # known only now: the counts are the pass's result
            raise StempressError(f"{self.counts.name}: up to {largest} electrons counted in one pixel, and "
                                 f"stempy stores one frame per electron (at most {MAX_AUTO_FRAMES_PER_POSITION} "
                                 "here); write raw_csr instead: an OUT ending in .toml, or --format raw_csr "
                                 "(ingest: --event-format raw_csr; fmt='raw_csr'), or --format entropy")
        with RawCsrSource(staged) as events:  # the tally saw the largest count: no pass to find it again
            write_stempy(events, out, force=True, rows=self.rows, frames_per_position=max(1, largest),
                         record=record)
        with h5py.File(out, "a") as f:
            f[STEMPY_METADATA].attrs["source"] = self.counts.name

    def abort(self) -> None:
        """Delete the staged set, the staging folder and every partial output."""
        if self._stream is not None:
            self._stream.abort()
        if self._writer is not None:
            self._writer.abort()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            discard(stack)


class CountedRows:
    """A worker's share of the events: its partition's frames counted (``params``) or taken as counts, held as
    event blocks with their tally until merged. Picklable: parameters and names only until it has consumed."""

    name = "events"

    def __init__(self, params: CountingParams | None, source: str, counts: str, det: tuple[int, int]) -> None:
        self.params, self.source, self.counts, self.det = params, source, counts, tuple(det)

    def open(self, info: RunInfo) -> None:
        self.events: list[EventBlock] = []
        self.tally = CountTally(self.det)  # type: ignore[arg-type]
        self.max_input: float | None = None

    def consume(self, block: Block) -> None:
        params = self.params
        events, top, _ = counted_events(block, params, self.source, self.counts, self.tally,
                                        lambda frames: count_frames(frames, params))  # type: ignore[arg-type]
        self.events.append(events)
        if top is not None:
            self.max_input = top if self.max_input is None else max(self.max_input, top)

    def finish(self) -> CountedRows:
        return self


def dense_counts(block: Block, params: CountingParams | None, source: str,
                 count: Any) -> tuple[np.ndarray, float | None]:
    """A block's counts (its frames counted with ``count`` first when ``params`` are given; else the block's
    data, refused unless non-negative integers) and the largest input value (for the warnings), None when the
    frames were counts already."""
    data = np.asarray(block.data)
    if params is None:
        refuse_non_counts(data, block.start, source)
        return data, None
    check_frames(data, f"{source} rows [{block.start}, {block.stop})")
    top = float(data.max()) if data.size else None
    return count(data), top


def counted_events(block: Block, params: CountingParams | None, source: str, counts: str, tally: CountTally,
                   count: Any) -> tuple[EventBlock, float | None, np.ndarray]:
    """One block's events (its frames counted with ``count`` first when ``params`` are given), added to ``tally``;
    the largest input value (for the warnings), None when the frames were counts already; and the dense counts."""
    # counts as they are: events_from_block refuses non-counts as it goes
    data, top = (np.asarray(block.data), None) if params is None else dense_counts(block, params, source, count)
    events = events_from_block(Block(block.start, data), where=counts)
    tally.add_events(events)
    return events, top, data


class StagedCounts(RawCsrSource):
    """The sink's own staged raw_csr set, read back: its events are canonical (written from ``events_from_block``
    moments ago), so they are taken straight from the maps, without the re-sorting ``RawCsrSource`` does for files
    other writers made (96x96 frames, densified: ~20 against ~45 us per frame)."""

    def read_events(self, start: int, stop: int) -> EventBlock:
        start, stop = self.check_rows(start, stop)
        scan_x = self.shape[1]
        self.guard.ensure(start * scan_x, stop * scan_x)
        ptr = np.asarray(self._indptr[start * scan_x:stop * scan_x + 1]).astype(np.int64)
        lo, hi = int(ptr[0]), int(ptr[-1])
        return EventBlock(start=start, shape=(stop - start, *self.shape[1:]), indptr=ptr - lo,
                          indices=np.asarray(self._indices[lo:hi]), counts=np.asarray(self._data[lo:hi]),
                          dtype=self.dtype)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        events = self.read_events(start, stop)
        frame = self.shape[2] * self.shape[3]
        out = np.zeros(events.n_positions * frame, self.dtype)
        where = np.repeat(np.arange(0, events.n_positions * frame, frame, dtype=np.int64), np.diff(events.indptr))
        where += events.indices
        out[where] = events.counts
        return out.reshape(events.shape)


def _stempy_size_warning(out: Path, written: Path, staged: Path) -> list[str]:
    """stempy stores 4 bytes per electron and one entry per count level: say so when that costs a lot."""
    stempy = written.stat().st_size
    raw_csr = sum(p.stat().st_size for p in (staged, *raw_csr_files(staged).values()))
    if stempy <= STEMPY_SIZE_WARNING * raw_csr or stempy - raw_csr < STEMPY_SIZE_WARNING_BYTES:
        return []
    return [f"{out} (stempy) takes {stempy / raw_csr:.1f}x the bytes of the same counts as raw_csr ({stempy:,} B "
            f"vs {raw_csr:,} B): stempy stores every electron and every count level separately; for counts this "
            "high write --format raw_csr (or an OUT ending in .toml), or --format entropy (smallest); ingest: "
            "--event-format"]


__all__ = ["EventSink", "stream_coder"]
