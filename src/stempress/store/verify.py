"""Prove a stored cube is intact: every chunk's stored bytes, its decoded bytes, and optionally the source.

Three checks, cheapest first, so a corrupt file is named by the most precise reason: the CRC of each chunk's
stored (compressed) bytes, which needs no decoding; then decoding every chunk (in parallel where the codec
allows) and the CRC of the decoded chunk; then, with ``against``, a bit-for-bit comparison with the source.
The last two are sinks (``sinks.reference``) that ``engine.run`` feeds with the decoded cube, on the caller's
executor; the first reads stored bytes, not the cube, so it stays a loop over chunks here.
Problems are named by scan position, which is what a user can look at; a file without stored checksums is
still decoded (and compared), and the report says so: "decoded, not verified", never OK, unless it was compared.

Every other format stempress reads is verified as a source (``_SourceVerifier``): the event files (stempy and
raw_csr with the CRC of each chunk of scan rows, ``data.event_checksums``; the entropy-coded file, whose reader checks
its own chunks), and frame files without checksums (.mib, .npy, NXmx), which are decoded whole (a truncated file
fails) and compared with ``against``. The report says which checks it could make. A ``--shards`` master is
verified shard by shard (``verify_master``), each shard as the archive it is.

On a remote executor (Dask, worker processes) the workers do the decoding: each partition of scan rows (the
engine's ``partitions_for``) travels as the file's ``SourceSpec`` and the ``--against`` source's, its worker reopens
both and checks its rows (an HDF5 cube: ``_check_part``; any other format: ``_check_source_part``), and the first
problem in row order is the one reported, so the report is the one an inline run gives. What stays in this
process, and why, is said once in ``VerifyReport.note`` (``here_reason``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.codecs.base import ChunkCodec, Codec, Pipeline
from stempress.codecs.catalog import identify
from stempress.codecs.chunk_codec import chunk_codec_for
from stempress.codecs.parallel import chunk_grid, full_chunk, read_chunks_parallel
from stempress.codecs.registry import codec_from_config, codec_from_pipeline
from stempress.cores import resolve_workers
from stempress.data.base import Block, Dataset4D, block_rows, require_file, row_spans, rows_for_budget
from stempress.data.checksums import ChunkChecksums
from stempress.data.emd import CODEC_ATTR
from stempress.data.hdf5 import Hdf5Source, dataset_filters, one_line, open_hdf5
from stempress.data.open import SourceSpec, spec_of
from stempress.data.stream import BlockStream
from stempress.engine import (
    PARTITIONS_PER_WORKER,
    closing_iterator,
    partition_ranges,
    partitions_for,
    read_blocks,
    run,
)
from stempress.errors import StempressError
from stempress.exec.base import Executor
from stempress.exec.local import InlineExecutor, ThreadExecutor
from stempress.exec.processes import local_processes
from stempress.sinks.protocol import Sink
from stempress.sinks.reference import CheckFailed, DecodedCheckSink, Problem, ReferenceCheckSink, shape_problem
from stempress.sinks.shards import shard_sources

#: What a report says instead of OK when nothing could prove the data right.
NOT_VERIFIED = "decoded, not verified (no checksums; pass --against)"
#: Decoded bytes per block (None: ``data.base.DEFAULT_BLOCK_BYTES``); a remote verification's partitions are
#: whole blocks.
BLOCK_BYTES: int | None = None
#: Kinds of PATH that are frame stacks whose scan shape the user may have to give (``scan_shape``).
_FRAME_STACKS = ("mib", "npy", "nxmx")


@dataclass(frozen=True)
class VerifyReport:
    """What was checked and the first problem, if any. ``codec`` is the HDF5 codec, or the format of a file
    verified as a source (``direct`` False, ``dataset_path`` empty); ``unit`` is what ``chunks_*`` count, and
    ``checks`` says in words which checksums were checked (default: the HDF5 path's)."""

    path: Path
    dataset_path: str
    codec: str
    direct: bool
    chunks_total: int
    chunks_checked: int
    checksums: bool
    compared: bool
    bad_chunks: int
    problem: Problem | None
    seconds: float
    unit: str = "chunks"
    checks: str | None = None
    #: The configuration (``get_config()``) the cube was decoded with, when stempress could rebuild its codec.
    codec_config: dict[str, Any] | None = None
    #: Why checks asked to run on an executor's workers ran in this process instead (None: they ran where asked).
    note: str | None = None

    @property
    def ok(self) -> bool:
        """Nothing was found wrong (see ``verified`` for whether anything proved it right)."""
        return self.problem is None

    @property
    def verified(self) -> bool:
        """Stored checksums matched or the source compared equal: more than "it decodes"."""
        return self.checksums or self.compared

    def summary(self) -> str:
        if self.dataset_path:
            how = "parallel" if self.direct else "HDF5 filter path"
            head = f"{self.path}:{self.dataset_path} ({self.codec}, {how})"
        else:
            head = f"{self.path} ({self.codec})"
        if self.problem is not None and self.chunks_checked == 0 and self.problem.rows is None:
            return f"{head}: FAILED before any {self.unit[:-1]} was read: {self.problem.reason}"
        sums = self.checks or ("stored and decoded CRCs" if self.checksums else "no stored checksums")
        against = ", compared bit-exact with the source" if self.compared else ""
        head = f"{head}: {self.chunks_checked}/{self.chunks_total} {self.unit} checked, {sums}{against}"
        if self.ok:
            return f"{head}: {'OK' if self.verified else NOT_VERIFIED}"
        extra = f" ({self.bad_chunks} chunks with bad stored bytes)" if self.bad_chunks > 1 else ""
        return f"{head}: FAILED at {self.problem.where()}: {self.problem.reason}{extra}"  # type: ignore[union-attr]


def verify(path: Path | str, *, against: Dataset4D | None = None, workers: int | None = None,
           dataset: str | None = None, scan_shape: tuple[int, int] | None = None,
           executor: Executor | None = None) -> VerifyReport:
    """Check every chunk of the cube in ``path`` (auto-detected like any source, or ``dataset``).

    HDF5 cubes: stored and decoded CRCs per chunk (``workers`` threads decode). Event files and frame files: see
    ``_SourceVerifier`` (``workers`` processes decode an entropy-coded file; ``scan_shape`` reads a .mib, .npy
    frame stack or NXmx master). The checks of the decoded cube (decoded CRCs, ``against``) are sinks that
    ``engine.run`` feeds; ``executor`` (the caller closes it) runs them, else ``workers`` threads of our own.
    """
    from stempress.data.open import file_kind

    path = Path(path)
    started = time.perf_counter()
    kind = "hdf5" if dataset is not None else file_kind(require_file(path))
    if kind != "hdf5":
        return _verify_source(path, kind, against, workers, scan_shape, started, executor)
    with Hdf5Source(path, dataset) as located:  # missing file, not HDF5, no 4-D cube: one-line errors
        dataset_path = located.dataset_path
    n_workers = executor.workers if executor is not None else resolve_workers(workers)
    with (contextlib.nullcontext(executor) if executor is not None else ThreadExecutor(n_workers) as pool,
          open_hdf5(path) as f):
        dset = f[dataset_path]
        if dset.is_virtual:  # a --shards master: its shards are the archives
            return verify_master(path, dset, against, n_workers, started, pool)
        return _Verifier(path, dset, against, n_workers, started, pool).run()


def verify_master(path: Path, dset: h5py.Dataset, against: Dataset4D | None, workers: int,
                  started: float, executor: Executor) -> VerifyReport:
    """The report of a ``--shards`` master: every shard verified as the archive it is, chunks summed over them,
    the first problem found in master rows; then, with ``against``, the cube read through the master's virtual
    dataset compared with the source. Each shard and not only the virtual dataset, because HDF5 reads a missing
    or unreadable shard as the fill value without a word, and the checksums live in the shards. Each shard's
    checks and the comparison run on ``executor`` (the caller's; not closed here)."""
    sources = shard_sources(dset)
    total = checked = bad = 0
    checksums, direct, codec, config = True, True, "none", None
    problem: Problem | None = None
    row = 0
    for start, stop, shard, name in sources:
        if start != row:
            problem = Problem("stored", f"no shard holds scan rows {row}-{start - 1}", (row, start), (0, dset.shape[1]))
            break
        row = stop
        if not shard.is_file():
            problem = Problem("stored", f"shard {shard} is missing (HDF5 would read fill values there)",
                              (start, stop), (0, dset.shape[1]))
            break
        report = verify(shard, dataset=name, workers=workers, executor=executor)
        total, checked, bad = total + report.chunks_total, checked + report.chunks_checked, bad + report.bad_chunks
        checksums, direct = checksums and report.checksums, direct and report.direct
        codec, config = report.codec, report.codec_config
        if report.problem is not None:
            problem = _shifted(report.problem, start, f"shard {shard.name}: ")
            break
    if problem is None and row != dset.shape[0]:
        problem = Problem("stored", f"the shards end at scan row {row}, the cube has {dset.shape[0]}")
    compared, note = False, None
    if problem is None and against is not None:  # read through the virtual dataset, as a user does
        comparison = _Verifier(path, dset, against, workers, started, executor).run()
        problem, note = comparison.problem, comparison.note
        compared = problem is None
    return VerifyReport(path=path, dataset_path=dset.name, codec=codec, direct=direct, chunks_total=total,
                        chunks_checked=checked, checksums=checksums and bool(sources), compared=compared,
                        bad_chunks=bad, problem=problem, seconds=time.perf_counter() - started,
                        checks=(f"stored and decoded CRCs of {len(sources)} shards" if checksums and sources
                                else None),
                        codec_config=config, note=note)


def _shifted(problem: Problem, rows: int, prefix: str) -> Problem:
    moved = None if problem.rows is None else (problem.rows[0] + rows, problem.rows[1] + rows)
    return replace(problem, reason=prefix + problem.reason, rows=moved)


def tracked(holder: Any, blocks: Iterator[Block]) -> Iterator[Block]:
    """The blocks, with ``holder.position`` where the next one starts (a reader's failure is in the block there),
    closed here however the walk ends."""
    with closing_iterator(blocks):
        for block in blocks:
            holder.position = block.stop
            yield block


class _Verifier:
    """One verification: holds the dataset, its chunk geometry and what has been checked so far."""

    def __init__(self, path: Path, dset: h5py.Dataset, against: Dataset4D | None, workers: int,
                 started: float, executor: Executor, span: tuple[int, int] | None = None) -> None:
        self.path, self.dset, self.against, self.workers, self.started = path, dset, against, workers, started
        self.executor = executor
        self.shape = tuple(dset.shape)
        self.span = span or (0, self.shape[0])  # the scan rows decoded: all, or a remote partition's
        self.position = self.span[0]
        self.chunks = tuple(dset.chunks) if dset.chunks else self.shape
        self.grid = chunk_grid(self.shape, self.chunks)
        self.total = int(np.prod(self.grid, dtype=np.int64))
        self.checked = 0
        self.bad_chunks = 0
        self.record = ChunkChecksums.load(dset.file, dset.name) if dset.chunks else None
        self.codec, self.chunk_codec = _codec_of(dset)
        self.note: str | None = None

    def run(self) -> VerifyReport:
        problem = self._check_geometry() or self._check_stored() or self._check_decoded()
        return self._report(problem)

    def _report(self, problem: Problem | None) -> VerifyReport:
        name = self.codec.name if self.codec else "+".join(f["name"] for f in dataset_filters(self.dset)) or "none"
        return VerifyReport(path=self.path, dataset_path=self.dset.name, codec=name,
                            direct=self.chunk_codec is not None, chunks_total=self.total,
                            chunks_checked=self.checked, checksums=self.record is not None,
                            compared=self.against is not None, bad_chunks=self.bad_chunks, problem=problem,
                            seconds=time.perf_counter() - self.started,
                            codec_config=self.codec.get_config() if self.codec else None, note=self.note)

    def _check_geometry(self) -> Problem | None:
        if self.record is not None and (self.record.grid_shape != self.grid
                                        or self.record.chunk_shape != self.chunks):
            return Problem("stored", f"the stored checksums describe chunks {self.record.chunk_shape} in a grid "
                                     f"{self.record.grid_shape}, the dataset has {self.chunks} in {self.grid}; "
                                     "the file was altered after it was written")
        return shape_problem(self.against, self.shape, self.dset.dtype)

    def _at_chunk(self, index: tuple[int, ...], kind: str, reason: str) -> Problem:
        return Problem.at_chunk(index, self.chunks, self.shape, kind, reason)

    def _check_stored(self) -> Problem | None:
        """CRC of every chunk's bytes as stored: no decoding, so it is cheap and names corruption on disk."""
        if self.record is None:
            return None
        first: Problem | None = None
        for index in np.ndindex(*self.grid):
            offset = tuple(i * c for i, c in zip(index, self.chunks, strict=True))
            try:
                _mask, stored = self.dset.id.read_direct_chunk(offset)
                reason = self.record.check_chunk(index, stored=stored)
            except Exception as exc:  # an unreadable chunk is as bad as a wrong one
                reason = f"stored chunk unreadable: {one_line(exc)}"
            if reason is not None:
                self.bad_chunks += 1
                if first is None:
                    first = self._at_chunk(index, "stored", reason)
        return first

    def _check_decoded(self, rows: int | None = None) -> Problem | None:
        """Decode every chunk and run the checks over the decoded cube as sinks (``engine.run``): the CRC of each
        decoded chunk where recorded, and the source bit for bit if given. A chunk that does not decode stops the
        reader; the chunk is then found by decoding the failed block's chunks one at a time. On a remote executor
        (Dask) the workers decode and check partitions of the file themselves (``_check_decoded_remote``)."""
        multiple = self.chunks[0] if self.dset.chunks else 1
        rows = rows or block_rows(self.shape, self.dset.dtype, multiple=multiple, budget=BLOCK_BYTES)
        if self.executor.remote:
            self.note = here_reason(self.against)
            if self.note is None:
                return self._check_decoded_remote(rows)
        sinks: list[Sink] = [DecodedCheckSink(self.record, self.chunks if self.record else None, self.dset.fillvalue)]
        if self.against is not None:
            sinks.append(ReferenceCheckSink(self.against))
        self.position = self.span[0]
        stream = BlockStream(self._decoded(rows), self.shape, self.dset.dtype, name=str(self.path))  # type: ignore[arg-type]
        per_row = int(np.prod(self.grid[1:], dtype=np.int64))
        try:
            run(stream, sinks, executor=self.executor)
        except CheckFailed as exc:
            self.checked = exc.problem.rows[0] // multiple * per_row if exc.problem.rows else 0
            return exc.problem
        except StempressError as exc:  # the reader's message names the chunk; find it exactly
            self.checked = self.position // multiple * per_row
            return self._first_bad_chunk(self.position, rows) or Problem("decoded", str(exc))
        self.checked = self.total if self.span == (0, self.shape[0]) else _chunks_in(self.span, multiple) * per_row
        return None

    def _check_decoded_remote(self, rows: int) -> Problem | None:
        """The decoded checks on the executor's workers: each partition (whole blocks of ``rows``, so blocks cut
        as here) travels as the file's path, dataset and rows (``_DecodeTask``), its worker reopens the file and
        the source, runs ``_check_decoded`` on its rows and sends back only the first problem; the first one in row
        order is the one reported, as inline."""
        parts = PARTITIONS_PER_WORKER * self.executor.workers
        ranges = partition_ranges(self.shape[0], parts, rows) if self.shape[0] else []
        against = spec_of(self.against) if self.against is not None else None
        tasks = (_DecodeTask(str(self.path.absolute()), self.dset.name, span, rows, against) for span in ranges)
        with closing_iterator(self.executor.map_ordered(_check_part, tasks)) as results:  # closing cancels the rest
            for problem, checked in results:
                if problem is not None:
                    self.checked = checked
                    return problem
        self.checked = self.total
        return None

    def _decoded(self, rows: int) -> Iterator[Block]:
        """The stored cube decoded, block by block; ``position`` is where the next block starts."""
        return tracked(self, self._blocks(rows))

    def _blocks(self, rows: int) -> Iterator[Block]:
        if self.chunk_codec is not None:
            return read_chunks_parallel(self.dset, self.chunk_codec, workers=self.workers, rows=rows,
                                        start=self.span[0], stop=self.span[1])
        return self._filtered_blocks(rows)

    def _filtered_blocks(self, rows: int) -> Iterator[Block]:
        """HDF5's own filter path (any filter this process can decode)."""
        for start, stop in row_spans(self.span[1], rows, self.span[0]):
            try:
                data = self.dset[start:stop]
            except (OSError, RuntimeError, ValueError) as exc:
                raise StempressError(f"cannot decode scan rows {start}-{stop - 1}: {one_line(exc)}") from exc
            yield Block(start, data)

    def _first_bad_chunk(self, start: int, rows: int) -> Problem | None:
        """After a failed block, find the exact chunk by checking the block's chunks one at a time."""
        first_row = start // self.chunks[0]
        last_row = min(self.grid[0], -(-min(start + rows, self.shape[0]) // self.chunks[0]))
        for row in range(first_row, last_row):
            for rest in np.ndindex(*self.grid[1:]):
                index = (row, *rest)
                reason = self._chunk_problem(index)
                if reason is not None:
                    return self._at_chunk(index, "decoded", reason)
        return None

    def _chunk_problem(self, index: tuple[int, ...]) -> str | None:
        lo = tuple(i * c for i, c in zip(index, self.chunks, strict=True))
        sel = tuple(slice(o, min(o + c, n)) for o, c, n in zip(lo, self.chunks, self.shape, strict=True))
        try:
            piece = self.dset[sel]
        except (OSError, RuntimeError, ValueError) as exc:
            return f"chunk does not decode: {one_line(exc)}"
        if self.record is None:
            return None
        return self.record.check_chunk(index, raw=full_chunk(piece, self.chunks, self.dset.fillvalue))


def _chunks_in(span: tuple[int, int], multiple: int) -> int:
    """Chunk rows that scan rows ``[start, stop)`` touch."""
    return -(-span[1] // multiple) - span[0] // multiple


@dataclass(frozen=True)
class _DecodeTask:
    """One partition of a remote verification, picklable: the stored file (absolute path) and dataset, its scan
    rows, and how to reopen the source it is compared with."""

    path: str
    dataset: str
    span: tuple[int, int]
    rows: int
    against: SourceSpec | None = None


def _check_part(task: _DecodeTask) -> tuple[Problem | None, int]:
    """Worker: the decoded checks of one partition, as ``_Verifier`` runs them inline (one decoding thread: the
    workers are the parallelism); returns the first problem, or None, and the chunks checked before it."""
    with (open_hdf5(Path(task.path)) as f,
          task.against.open() if task.against is not None else contextlib.nullcontext() as against):
        verifier = _Verifier(Path(task.path), f[task.dataset], against, 1, time.perf_counter(), InlineExecutor(),
                             task.span)
        problem = verifier._check_decoded(task.rows)  # the client's blocks, so cut where its would be
        return problem, verifier.checked


def _codec_of(dset: h5py.Dataset) -> tuple[Codec | None, ChunkCodec | None]:
    """The codec that wrote this dataset, and its parallel decoder where it has one: rebuilt from the
    configuration stempress stores with the cube when that matches the dataset's filters, else from the filter
    pipeline itself (files from other tools or older stempress, edited pipelines), never from a name alone.
    None when neither describes it (filters stempress does not know): HDF5's filter path decodes those."""
    if not dset.chunks:
        return None, None
    pipeline = [(f["id"], f["options"]) for f in dataset_filters(dset)]
    codec = _stored_codec(dset, pipeline)
    if codec is None:
        found = codec_from_pipeline(pipeline)
        codec = identify(found) if found is not None else None
    if codec is None:
        return None, None
    return codec, chunk_codec_for(codec, dset.dtype)


def _stored_codec(dset: h5py.Dataset, pipeline: Pipeline) -> Codec | None:
    """The codec the configuration attribute describes, if it declares exactly the dataset's filters."""
    raw = dset.attrs.get(CODEC_ATTR)
    if raw is None:
        return None
    try:
        codec = codec_from_config(json.loads(raw))
    except (ValueError, TypeError, StempressError):  # not JSON, or a configuration this version cannot read
        return None
    return codec if codec.filters == tuple(fid for fid, _ in pipeline) else None


# -- where the checks run -----------------------------------------------------------------------------------------
def here_reason(against: Dataset4D | None) -> str | None:
    """Why a verification asked to run on remote workers must check in this process, or None when the workers
    can. Every file ``verify`` reads splits into partitions of scan rows that a worker reopens by path: an HDF5
    cube, a ``--shards`` master's shards, and every format verified as a source (mib, npy and NXmx frame stacks;
    stempy, raw_csr and entropy-coded event files), since each reads any scan rows on their own and remembers
    how it was opened (``SourceSpec``). What a worker cannot reopen is a reference that exists only in this
    process (an array, a wrapper): its comparison, and so the decoding it needs, runs here."""
    if against is None or spec_of(against) is not None:
        return None
    return (f"the --against source {against.name!r} is held in this process (not a file the workers can reopen), "
            "so the file was decoded and compared here, not on the workers")


# -- any other format, verified as a source ---------------------------------------------------------------------
def _verify_source(path: Path, kind: str, against: Dataset4D | None, workers: int | None,
                   scan_shape: tuple[int, int] | None, started: float,
                   executor: Executor | None = None) -> VerifyReport:
    from stempress.data.open import open_source

    remote = executor if executor is not None and executor.remote else None
    if kind != "entropy" or remote is not None:  # on workers, each decodes its own rows' chunks in its process
        with open_source(path, scan_shape=scan_shape if kind in _FRAME_STACKS else None) as source:
            return _SourceVerifier(path, kind, source, against, started).run(remote)
    from stempress.data.entropy_file import open_entropy

    # the caller's process executor, else worker processes of our own (closed after the source)
    with local_processes(workers, executor) as pool, open_entropy(path, executor=pool) as source:
        return _SourceVerifier(path, kind, source, against, started).run()


class _SourceVerifier:
    """A file read through its source: every chunk checksum it carries (stempy, raw_csr: all of them, without
    decoding, so every bad chunk is counted), then every scan row decoded (an entropy-coded file's reader checks
    its own chunks) and, with ``against``, compared bit for bit. ``span``: the scan rows of a remote partition,
    whose stored checks cover the chunks that start in it (each chunk in exactly one partition).

    ``rows_done`` counts the scan rows checked before the first problem (all of them when there is none), so the
    report does not depend on how the rows were cut into blocks or partitions."""

    def __init__(self, path: Path, kind: str, source: Dataset4D, against: Dataset4D | None, started: float,
                 span: tuple[int, int] | None = None) -> None:
        from stempress.data.entropy_file import CODEC, has_checksums

        self.path, self.kind, self.source, self.against, self.started = path, kind, source, against, started
        self.span = span or (0, source.shape[0])
        self.guard = getattr(source, "guard", None)  # data.event_checksums.ChunkGuard of a stempy / raw_csr source
        self.sums = None if self.guard is None else self.guard.checksums
        self.label = CODEC if kind == "entropy" else kind
        self.reader_checksums = kind == "entropy" and has_checksums(path)
        self.rows_done = self.bad = 0
        self.position = self.span[0]
        self.note: str | None = None

    def run(self, executor: Executor | None = None) -> VerifyReport:
        """The checks here, or on ``executor``'s (remote) workers partition by partition where they can."""
        problem = shape_problem(self.against, self.source.shape, np.dtype(self.source.dtype))
        if problem is None and executor is not None:
            self.note = here_reason(self.against) or (None if spec_of(self.source) is not None else
                                                      f"{self.path} was not opened from a file the workers can "
                                                      "reopen, so it was checked here")
            if self.note is None:
                return self._report(self._check_on_workers(executor))
        return self._report(problem or self._check_stored() or self._check_decoded())

    def _at(self, positions: tuple[int, int], kind: str, reason: str, chunk: int | None = None) -> Problem:
        """A problem at scan positions ``[first, end)``, as the scan rows (and columns, within one row) they span."""
        scan_x = self.source.shape[1]
        (r0, c0), (r1, c1) = divmod(positions[0], scan_x), divmod(positions[1] - 1, scan_x)
        cols = (c0, c1 + 1) if r0 == r1 else (0, scan_x)
        return Problem(kind, reason, (r0, r1 + 1), cols, None if chunk is None else (chunk,))

    def _own_chunks(self) -> range:
        """The checksummed chunks whose first scan position lies in ``span``: every chunk for the whole file."""
        assert self.sums is not None
        scan_x, per = self.source.shape[1], self.sums.per_chunk
        first, end = self.span[0] * scan_x, self.span[1] * scan_x
        return range(-(-first // per), min(self.sums.n_chunks, -(-end // per)))

    def _check_stored(self) -> Problem | None:
        if self.sums is None:
            return None
        first: Problem | None = None
        for chunk in self._own_chunks():
            try:
                reason = self.guard.chunk_problem(chunk)  # type: ignore[union-attr]
            except (StempressError, OSError, ValueError) as exc:  # an unreadable chunk is as bad as a wrong one
                reason = f"chunk {chunk} unreadable: {one_line(exc)}"
            if reason is not None:
                self.bad += 1
                first = first or self._at(self.sums.positions(chunk), "stored", reason, chunk)
        return first

    def _check_decoded(self) -> Problem | None:
        """Every scan row of ``span`` read through the source by ``engine.run`` (the source's reader checks what it
        carries), compared with ``against`` by a sink if given; a failed block is narrowed down to its first bad
        row."""
        from stempress.data.event_checksums import ChecksumError

        start, stop = self.span
        rows = rows_for_budget(self.source)
        sinks: list[Sink] = [DecodedCheckSink()]
        if self.against is not None:
            sinks.append(ReferenceCheckSink(self.against))
        self.position = start
        stream = BlockStream(tracked(self, read_blocks(self.source, rows, start, stop)), self.source.shape,
                             self.source.dtype, name=self.source.name)
        try:
            run(stream, sinks)
        except ChecksumError as exc:
            problem = self._at(exc.positions, "stored", str(exc), exc.chunk)
        except CheckFailed as exc:
            problem = exc.problem
        except StempressError as exc:
            problem = self._first_bad_row(self.position, min(self.position + rows, stop), exc)
        else:
            self.rows_done = stop
            return None
        self.rows_done = problem.rows[0] if problem.rows is not None else start
        return problem

    def _first_bad_row(self, start: int, stop: int, error: StempressError) -> Problem:
        """After a failed block, the first row that fails alone (a reader's message names what it could)."""
        scan_x = self.source.shape[1]
        for row in range(start, stop):
            try:
                self.source.read_rows(row, row + 1)
            except StempressError as exc:
                return Problem("decoded", str(exc), (row, row + 1), (0, scan_x))
        return Problem("decoded", str(error), (start, stop), (0, scan_x))

    def _partition_rows(self) -> int:
        """Rows a partition's edges fall on, so each checksummed chunk lies in one partition and is read by one
        worker: whole chunks of an event file (chunks are runs of scan positions), an entropy file's chunk rows."""
        if self.sums is not None:
            scan_x = self.source.shape[1]
            return math.lcm(self.sums.per_chunk, scan_x) // scan_x
        starts = getattr(self.source, "row_starts", None)
        return int(starts[1] - starts[0]) if starts is not None and len(starts) > 1 else 1

    def _check_on_workers(self, executor: Executor) -> Problem | None:
        """``_check_stored`` and ``_check_decoded`` of each partition on a worker (``_check_source_part``). Every
        partition's stored checks are counted, as inline; a stored problem anywhere comes first (inline checks
        every chunk's stored bytes before decoding any), else the first decoded problem in row order. Without
        stored checks nothing after the first problem can come before it, so the partitions left are cancelled."""
        spec = spec_of(self.source)
        against = spec_of(self.against) if self.against is not None else None
        ranges = partitions_for(self.source, executor.workers, self._partition_rows())
        tasks = (_SourcePart(spec, self.kind, span, against) for span in ranges)  # type: ignore[arg-type]
        stored = decoded = None
        # closing the map cancels the partitions not yet run
        with closing_iterator(executor.map_ordered(_check_source_part, tasks)) as results:
            for bad, stored_here, decoded_here, rows_done in results:
                self.bad += bad
                stored = stored or stored_here
                if decoded is None and decoded_here is not None:
                    decoded, self.rows_done = decoded_here, rows_done
                if decoded is not None and self.sums is None:
                    break
        if stored is not None:
            self.rows_done = 0  # as inline: nothing is decoded when stored bytes are wrong
            return stored
        if decoded is None:
            self.rows_done = self.source.shape[0]
        return decoded

    def _entropy_checks(self) -> str:
        """What the entropy reader checked: its chunks' coded bytes against their stored CRCs, counted as the
        chunks that end before the first problem (every one read, in order, inline or by some worker)."""
        algorithm = getattr(self.source, "checksum_algorithm", None) or "CRC"
        total = int(self.source.metadata.get("n_chunks", 0))
        starts = getattr(self.source, "row_starts", None)
        checked = total if starts is None else int(np.count_nonzero(np.asarray(starts[1:]) <= self.rows_done))
        return f"stored {algorithm} of {checked}/{total} coded chunks (words, escapes) and of the model"

    def _report(self, problem: Problem | None) -> VerifyReport:
        scan_x = self.source.shape[1]
        if self.sums is not None:
            done = self.rows_done * scan_x
            total = self.sums.n_chunks
            checked = total if self.rows_done == self.source.shape[0] else min(total, done // self.sums.per_chunk)
            checks = f"stored {self.sums.algorithm} of {', '.join(self.sums.crcs)}"
            unit = "chunks"
        else:
            total, checked, unit = self.source.shape[0], self.rows_done, "scan rows"
            checks = (self._entropy_checks() if self.reader_checksums
                      else f"no stored checksums ({self.kind} files carry none)" if self.kind in _FRAME_STACKS
                      else "no stored checksums (written before entropy files had them)" if self.kind == "entropy"
                      else "no stored checksums")
        return VerifyReport(path=self.path, dataset_path="", codec=self.label, direct=False, chunks_total=total,
                            chunks_checked=checked, checksums=self.sums is not None or self.reader_checksums,
                            compared=self.against is not None, bad_chunks=self.bad, problem=problem,
                            seconds=time.perf_counter() - self.started, unit=unit, checks=checks, note=self.note)


@dataclass(frozen=True)
class _SourcePart:
    """One partition of a remote verification of a file read as a source, picklable: how to reopen the file and
    the source it is compared with, its kind and its scan rows."""

    source: SourceSpec
    kind: str
    span: tuple[int, int]
    against: SourceSpec | None = None


def _check_source_part(task: _SourcePart) -> tuple[int, Problem | None, Problem | None, int]:
    """Worker: the stored checks of the partition's chunks, then (when they pass) its rows decoded and compared,
    as ``_SourceVerifier`` runs them inline; returns the bad chunks, the first stored problem, the first decoded
    problem and the scan rows checked before it."""
    with (task.source.open() as source,
          task.against.open() if task.against is not None else contextlib.nullcontext() as against):
        verifier = _SourceVerifier(Path(task.source.target), task.kind, source, against, time.perf_counter(),
                                   task.span)
        stored = verifier._check_stored()
        decoded = verifier._check_decoded() if stored is None else None
        return verifier.bad, stored, decoded, verifier.rows_done
