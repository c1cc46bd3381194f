"""The one HDF5 archive writer, used by ``compress``, ``bench``, ``simulate``, ``plan --write`` and ``ingest``.

Two paths to the same bytes: the **direct-chunk** path compresses whole chunks on the run's executor and stores
them in chunk-grid order with ``write_direct_chunk`` (so any worker count gives the same file), and the
**filter** path hands blocks to HDF5's own one-threaded pipeline (the study's way, and the fallback for codecs
without a chunk encoder). Either way the dataset declares the codec's filter pipeline, so any h5py + hdf5plugin
reads the file, and each chunk's CRC (stored and raw bytes) can go with it, for ``verify``. The file is written
under a temporary name and appears only complete (``atomic_output``), never replacing a file unasked.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.atomic import EarlyWriteback, atomic_output, check_new_output, writing
from stempress.codecs.base import ChunkCodec
from stempress.codecs.catalog import Codec
from stempress.codecs.chunk_codec import chunk_codec_for, direct_chunk_reason
from stempress.codecs.chunking import chunk_shape
from stempress.codecs.hdf5_store import create_cube_dataset
from stempress.codecs.parallel import ChunkEncoder, chunk_pieces, full_chunk, whole_chunk_rows
from stempress.data.base import Block
from stempress.data.checksums import ALGORITHM, ChunkChecksums
from stempress.data.emd import data_path, prepare_layout, write_source_metadata
from stempress.exec.base import Executor, in_flight_for
from stempress.exec.local import InlineExecutor
from stempress.sinks.protocol import RunInfo

#: What a chunk task returns (``ChunkEncoder``): stored bytes, stored CRC, raw CRC, encode and CRC CPU seconds.
EncodedChunk = tuple[bytes, int, int, float, float]
#: The dataset beside the cube marking which frames arrived (live streams).
RECEIVED = "received"
#: Chunk bytes per worker in one block, so every worker has chunks to compress while the next block is read.
BLOCK_BYTES_PER_WORKER = 16 * 1024**2


@dataclass(frozen=True)
class ArchiveSpec:
    """What to write: ``chunks`` as ``chunk_shape`` takes it (a name such as ``balanced``, or sizes); ``direct``
    None picks the direct-chunk path when the codec has a chunk encoder, False forces HDF5's filter pipeline;
    ``truth`` is a function of scan rows giving expected counts, stored as float32 ``expected`` beside ``data``;
    ``provenance`` False leaves out the source's metadata and codec configuration (the study's bare file);
    ``durable`` False writes straight to ``path`` without syncing (the benchmark's own scratch files, timed as the
    study timed them; the path must be new, and a failed write still deletes it); ``filter_kwargs`` instead of a
    codec: ``create_dataset`` keywords as a user gives them to h5py (written through HDF5's filter pipeline)."""

    path: Path
    codec: Codec | None
    chunks: str | tuple[int, ...] | None = "balanced"
    layout: str = "emd"
    dataset_path: str | None = None
    force: bool = False
    checksums: bool = True
    direct: bool | None = None
    truth: Callable[[int, int], np.ndarray] | None = None
    provenance: bool = True
    durable: bool = True
    filter_kwargs: Mapping[str, Any] | None = None
    whole_chunks: bool = False


@dataclass(frozen=True)
class ArchiveResult:
    """What was written and how (``fallback_reason``: why the filter path was used, None when direct)."""

    path: Path
    codec: Codec | None
    chunks: tuple[int, int, int, int] | None
    direct: bool
    fallback_reason: str | None
    layout: str
    dataset_path: str
    file_bytes: int
    checksums_saved: bool = False
    #: Seconds per stage: encode (gathering included) and checksum as CPU seconds summed over workers; write (HDF5
    #: calls), wait (the writer waiting for encoded chunks) and publish (close, fsync, rename): the writer's clock.
    stages: dict[str, float] = field(default_factory=dict)
    #: Shard files behind a ``--shards`` master (``sinks.shards``); 0 for one file.
    shards: int = 0


class ArchiveSink:
    """Writes every block it consumes into ``spec.path`` in row order.

    On a remote executor (Dask, processes) with a chunk encoder it also merges (``merges_on``): each worker
    reads its own partition of the scan (the engine sends it the source's spec) and compresses its chunks
    (``EncodedRows``), and ``merge`` writes them here in row order, so only compressed chunks cross the network
    and the file is byte for byte the one a single process writes. On threads it streams: one read ahead and
    chunks compressed on every thread, with no reopening of the source per partition."""

    name = "archive"
    block_bytes_per_worker = BLOCK_BYTES_PER_WORKER

    def __init__(self, spec: ArchiveSpec, *, name: str = "archive") -> None:
        self.spec, self.name = spec, name
        self.target = data_path(spec.layout, spec.dataset_path)  # a bad layout is refused before any work
        check_new_output(Path(spec.path), spec.force)
        self.row_multiple = 1
        self._stack: contextlib.ExitStack | None = None
        self._finished = False

    def open(self, info: RunInfo) -> None:
        spec = self.spec
        self.info = info
        self.chunks = chunk_shape(spec.chunks, info.shape) if spec.chunks is not None else None
        maxshape = None
        if spec.whole_chunks and isinstance(spec.chunks, tuple) and spec.chunks[0] > info.shape[0]:
            self.chunks = (spec.chunks[0], *self.chunks[1:])  # type: ignore[index]
            maxshape = (None, *info.shape[1:])
        self.executor: Executor = info.executor or InlineExecutor()
        wanted = (spec.direct is not False and self.chunks is not None and spec.codec is not None
                  and spec.filter_kwargs is None)
        # Blosc2 holds the GIL, so on threads it compresses with its own threads; a remote worker is one thread
        threads = 1 if self.executor.remote else self.executor.workers
        self.chunk_codec: ChunkCodec | None = (chunk_codec_for(spec.codec, info.dtype, threads=threads)
                                               if wanted else None)
        self.reason = (None if self.chunk_codec is not None
                       else "asked for the filter path" if spec.direct is False or spec.codec is None
                       else "the layout is contiguous (no chunks)" if self.chunks is None
                       else direct_chunk_reason(spec.codec, info.dtype) or "no chunk encoder")
        self._stack = contextlib.ExitStack()
        if spec.durable:
            tmp = self._stack.enter_context(atomic_output(Path(spec.path), force=spec.force))
        else:
            tmp = Path(spec.path)
            self._stack.callback(_delete_unless_finished, self, tmp)
        self.file = self._stack.enter_context(h5py.File(tmp, "w"))
        # a durable file is fsynced when complete: have the kernel write its chunks while the rest are made
        self.writeback = EarlyWriteback(tmp if spec.durable else None)
        self._stack.callback(self.writeback.close)
        self._kwargs = dict(spec.filter_kwargs) if spec.filter_kwargs is not None else (
            spec.codec.h5_kwargs() if spec.codec is not None else {})
        self._maxshape = maxshape
        self.dset: h5py.Dataset | None = None
        self.expected: h5py.Dataset | None = None
        self.checksums: ChunkChecksums | None = None
        self.stages = {"encode": 0.0, "checksum": 0.0, "write": 0.0, "wait": 0.0, "publish": 0.0}
        self.encoder: ChunkEncoder | None = None
        self._fill = np.zeros((), info.dtype)[()]  # h5py's default fill value, the dataset's
        if self.chunk_codec is None:
            self._prepare()  # h5py may chunk for a filter itself: row_multiple comes from the dataset
        else:
            # the layout and dataset are made once the first chunks are submitted (``_prepare``), so they already
            # compress on the workers while this thread builds the EMD tree (5-10 ms of HDF5 calls, the same calls
            # in the same order: the same file). The chunk task holds the codec's configuration only, so it
            # pickles to worker processes and Dask workers; the fill value is h5py's default, as the dataset's.
            self.row_multiple = self.chunks[0]  # type: ignore[index]
            self.encoder = ChunkEncoder(self.chunk_codec, tuple(self.chunks), self._fill, tuple(info.shape),  # type: ignore[arg-type]
                                        ALGORITHM if spec.checksums else None)
        self.received: np.ndarray | None = np.ones(info.shape[:2], bool) if info.metadata.get("live") else None
        self._pending: deque[tuple[tuple[int, ...], tuple[int, ...], Future[EncodedChunk]]] = deque()
        self._in_flight = in_flight_for(self.executor.workers)  # once: a Dask executor asks its scheduler

    def _prepare(self) -> None:
        """The file's layout (EMD tree), the cube's dataset, ``expected`` and the checksum record, once."""
        if self.dset is not None:
            return
        spec, info, kwargs = self.spec, self.info, self._kwargs
        group, name = prepare_layout(self.file, spec.layout, info.metadata, spec.dataset_path)
        dset = create_cube_dataset(group, name, info.shape, info.dtype, self.chunks, kwargs, self._maxshape)
        if spec.truth is not None:
            self.expected = create_cube_dataset(group, "expected", info.shape, np.dtype(np.float32), dset.chunks,
                                                kwargs)
        self.row_multiple = dset.chunks[0] if dset.chunks else 1
        self.checksums = ChunkChecksums.for_dataset(dset) if spec.checksums and dset.chunks else None
        if self.encoder is not None and (tuple(dset.chunks) != tuple(self.chunks)  # type: ignore[arg-type]
                                         or dset.fillvalue != self._fill or tuple(dset.shape) != tuple(info.shape)):
            raise AssertionError(f"{dset.name}: chunks {dset.chunks}, fill {dset.fillvalue!r}, not the encoder's")
        self.dset = dset

    def consume(self, block: Block) -> None:
        with writing(Path(self.spec.path)):  # a full disk here is one line naming OUT, as inside atomic_output
            self._consume(block)

    def _consume(self, block: Block) -> None:
        if block.valid is not None:
            if self.received is None:
                self.received = np.ones(self.info.shape[:2], bool)
            self.received[block.start:block.stop] = block.valid
        if self.chunk_codec is not None:
            self._direct(block)
        else:
            self._filtered(block)
        if self.spec.truth is not None:
            while self._pending:  # the block's chunks before its expected counts, in the file as ever
                self._store_next()
            self._prepare()
            self.expected[block.start:block.stop] = self.spec.truth(block.start, block.stop)  # type: ignore[index]

    def _direct(self, block: Block) -> None:
        """Submit the block's chunks, storing encoded ones in grid order whenever ``in_flight`` are pending.
        Chunks still encoding when the block is submitted stay pending into the next block (``finish`` stores
        the last): draining at every block's end left workers idle while the slowest chunk finished and the
        next block came (half a chunk per worker per block). Pending chunks keep their block alive, so memory
        is at most one block more."""
        chunks = tuple(self.chunks)  # type: ignore[arg-type]
        data = whole_chunk_rows(block, self.info.shape, chunks, self.info.dtype, self.target)
        pending = self._pending
        for index, offset, piece in chunk_pieces(block.start, data, chunks):
            while len(pending) >= self._in_flight:
                self._prepare()  # the EMD tree while the first chunks encode, not while the workers wait for more
                self._store_next()
            pending.append((index, offset, self.executor.submit(self.encoder, (index, piece))))
        self._prepare()
        while pending and pending[0][2].done():  # what is encoded already, without waiting
            self._store_next()

    def _store_next(self) -> None:
        """Store the oldest pending chunk, waiting for it (a failed encode is raised here, in grid order)."""
        index, offset, future = self._pending.popleft()
        t0 = time.perf_counter()
        stored, stored_crc, raw_crc, encode_s, crc_s = self.executor.result(future)
        self.stages["wait"] += time.perf_counter() - t0
        self._store(index, offset, stored, stored_crc, raw_crc, encode_s, crc_s)

    def _store(self, index: tuple[int, ...], offset: tuple[int, ...], stored: bytes, stored_crc: int, raw_crc: int,
               encode_s: float, crc_s: float) -> None:
        self._prepare()
        t0 = time.perf_counter()
        self.dset.id.write_direct_chunk(offset, stored, filter_mask=0)  # type: ignore[union-attr]
        self.writeback.wrote(len(stored))
        if self.checksums is not None:
            self.checksums.add_values(index, stored_crc, raw_crc)
        stages = self.stages
        stages["write"] += time.perf_counter() - t0
        stages["encode"] += encode_s
        stages["checksum"] += crc_s

    # -- partitions, on a remote executor ----------------------------------------------------------------------
    def merges_on(self, executor: Executor) -> bool:
        """Partitions only where workers are other processes and chunks are encoded outside HDF5."""
        return bool(executor.remote) and self.encoder is not None

    def partial(self, rows: tuple[int, int]) -> EncodedRows:
        assert self.encoder is not None, "open the sink first"
        return EncodedRows(self.encoder, np.dtype(self.info.dtype), self.target)

    def merge(self, part: EncodedRows) -> None:
        """Write a partition's compressed chunks (partitions arrive in row order, so chunks in grid order)."""
        with writing(Path(self.spec.path)):
            self._merge(part)

    def _merge(self, part: EncodedRows) -> None:
        for index, offset, stored, stored_crc, raw_crc, encode_s, crc_s in part.chunks:
            self._store(index, offset, stored, stored_crc, raw_crc, encode_s, crc_s)
        if self.spec.truth is not None:
            self._prepare()
            self.expected[part.start:part.stop] = self.spec.truth(part.start, part.stop)  # type: ignore[index]

    def _filtered(self, block: Block) -> None:
        t0 = time.perf_counter()
        self.dset[block.start:block.stop] = block.data  # HDF5 encodes and writes in one call
        self.writeback.wrote(block.data.nbytes)  # raw bytes: the stored ones are HDF5's to know
        self.stages["write"] += time.perf_counter() - t0
        if self.checksums is None:
            return
        t0 = time.perf_counter()
        chunks, fill = self.dset.chunks, self.dset.fillvalue
        for index, offset, piece in chunk_pieces(block.start, np.asarray(block.data), chunks):
            _mask, stored = self.dset.id.read_direct_chunk(offset)
            self.checksums.add(index, stored, full_chunk(piece, chunks, fill))
        self.stages["checksum"] += time.perf_counter() - t0

    def finish(self) -> ArchiveResult:
        """Checksums and metadata (after the data: sources may add metadata while producing it), then publish."""
        with writing(Path(self.spec.path)):
            return self._finish()

    def _finish(self) -> ArchiveResult:
        self._prepare()  # a run with no block still leaves a complete file
        while self._pending:
            self._store_next()
        if self.checksums is not None:
            self.checksums.save(self.file)
        if self.spec.provenance:
            config = self.spec.codec.config() if self.spec.codec is not None else None
            write_source_metadata(self.dset, self.spec.layout, self.info.metadata, config)
        if self.received is not None:
            write_received(self.dset, self.received)
        assert self._stack is not None
        self._finished = True
        t0 = time.perf_counter()
        self._stack.close()  # closes the file, syncs it and gives it its name
        self.stages["publish"] = time.perf_counter() - t0
        self._stack = None
        path = Path(self.spec.path)
        return ArchiveResult(path, self.spec.codec, self.chunks, self.chunk_codec is not None, self.reason,
                             self.spec.layout, self.target, path.stat().st_size, self.checksums is not None,
                             dict(self.stages))

    def abort(self) -> None:
        """Close and delete the partial file (chunks not yet encoding are cancelled, the rest discarded)."""
        pending, self._pending = getattr(self, "_pending", deque()), deque()
        for *_, future in pending:
            future.cancel()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            with contextlib.suppress(_Aborted):
                stack.__exit__(_Aborted, _Aborted(), None)


class EncodedRows:
    """A worker's share of the archive: its partition's chunks compressed, held until merged by the writer.
    Picklable (the encoder holds only the codec's configuration; no file is open here)."""

    name = "archive"

    def __init__(self, encoder: ChunkEncoder, dtype: np.dtype, dataset: str) -> None:
        self.encoder, self.dtype, self.dataset = encoder, dtype, dataset

    def open(self, info: RunInfo) -> None:
        self.start, self.stop = info.row_range
        self.chunks: list[tuple[tuple[int, ...], tuple[int, ...], bytes, int, int, float, float]] = []

    def consume(self, block: Block) -> None:
        chunks = self.encoder.chunks
        data = whole_chunk_rows(block, self.encoder.shape, chunks, self.dtype, self.dataset)
        for index, offset, piece in chunk_pieces(block.start, data, chunks):
            self.chunks.append((index, offset, *self.encoder((index, piece))))

    def finish(self) -> EncodedRows:
        return self


def write_received(dset: h5py.Dataset, received: np.ndarray) -> None:
    """The ``received`` mask beside ``dset`` (True: the frame arrived; False: the fill value stands in)."""
    mask = dset.parent.create_dataset(RECEIVED, data=received, compression="gzip")
    mask.attrs["description"] = ("True where the scan position's frame was received; elsewhere the data holds "
                                 "the fill value")
    dset.attrs["frames_missing"] = int(received.size - np.count_nonzero(received))


def _delete_unless_finished(sink: ArchiveSink, path: Path) -> None:
    if not sink._finished:
        path.unlink(missing_ok=True)


class _Aborted(Exception):
    """Raised into the output's context so ``atomic_output`` deletes the partial file."""
