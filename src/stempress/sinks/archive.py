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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.atomic import atomic_output, check_new_output
from stempress.codecs.catalog import Codec
from stempress.codecs.checksums import ChunkChecksums
from stempress.codecs.chunk_codec import ChunkCodec, chunk_codec_for, direct_chunk_reason
from stempress.codecs.chunking import chunk_shape
from stempress.codecs.hdf5_store import create_cube_dataset
from stempress.codecs.parallel import block_data, chunk_pieces, encode_chunk, full_chunk
from stempress.data.base import Block
from stempress.data.emd import data_path, prepare_layout, write_source_metadata
from stempress.exec.base import Executor
from stempress.exec.local import InlineExecutor
from stempress.sinks.protocol import RunInfo

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
    study timed them; the path must be new, and a failed write still deletes it)."""

    path: Path
    codec: Codec
    chunks: str | tuple[int, ...] | None = "balanced"
    layout: str = "emd"
    dataset_path: str | None = None
    force: bool = False
    checksums: bool = True
    direct: bool | None = None
    truth: Callable[[int, int], np.ndarray] | None = None
    provenance: bool = True
    durable: bool = True


@dataclass(frozen=True)
class ArchiveResult:
    """What was written and how (``fallback_reason``: why the filter path was used, None when direct)."""

    path: Path
    codec: Codec
    chunks: tuple[int, int, int, int] | None
    direct: bool
    fallback_reason: str | None
    layout: str
    dataset_path: str
    file_bytes: int
    checksums_saved: bool = False


class ArchiveSink:
    """Writes every block it consumes into ``spec.path``; consumes blocks in row order (not mergeable)."""

    name = "archive"
    block_bytes_per_worker = BLOCK_BYTES_PER_WORKER

    def __init__(self, spec: ArchiveSpec, *, name: str = "archive") -> None:
        self.spec, self.name = spec, name
        self.target = data_path(spec.layout, spec.dataset_path)  # a bad layout is refused before any work
        check_new_output(Path(spec.path), spec.force)
        self.row_multiple = 1
        self._stack: contextlib.ExitStack | None = None

    def open(self, info: RunInfo) -> None:
        spec = self.spec
        self.info = info
        self.chunks = chunk_shape(spec.chunks, info.shape) if spec.chunks is not None else None
        self.executor: Executor = info.executor or InlineExecutor()
        wanted = spec.direct is not False and self.chunks is not None
        self.chunk_codec: ChunkCodec | None = (chunk_codec_for(spec.codec, info.dtype, threads=self.executor.workers)
                                               if wanted else None)
        self.reason = (None if self.chunk_codec is not None else "asked for the filter path" if spec.direct is False
                       else "the layout is contiguous (no chunks)" if self.chunks is None
                       else direct_chunk_reason(spec.codec, info.dtype) or "no chunk encoder")
        self.row_multiple = self.chunks[0] if self.chunks else 1
        self._stack = contextlib.ExitStack()
        if spec.durable:
            tmp = self._stack.enter_context(atomic_output(Path(spec.path), overwrite=spec.force))
        else:
            tmp = Path(spec.path)
            self._stack.callback(_delete_unless_finished, self, tmp)
        self.file = self._stack.enter_context(h5py.File(tmp, "w"))
        group, name = prepare_layout(self.file, spec.layout, info.metadata, spec.dataset_path)
        self.dset = create_cube_dataset(group, name, info.shape, info.dtype, self.chunks, spec.codec.h5_kwargs())
        self.expected = None
        if spec.truth is not None:
            self.expected = create_cube_dataset(group, "expected", info.shape, np.dtype(np.float32), self.chunks,
                                                spec.codec.h5_kwargs())
        self.checksums = ChunkChecksums.for_dataset(self.dset) if spec.checksums and self.chunks else None
        self.received: np.ndarray | None = np.ones(info.shape[:2], bool) if info.metadata.get("live") else None

    def consume(self, block: Block) -> None:
        if block.valid is not None:
            if self.received is None:
                self.received = np.ones(self.info.shape[:2], bool)
            self.received[block.start:block.stop] = block.valid
        if self.chunk_codec is not None:
            self._direct(block)
        else:
            self._filtered(block)
        if self.expected is not None:
            self.expected[block.start:block.stop] = self.spec.truth(block.start, block.stop)  # type: ignore[misc]

    def _direct(self, block: Block) -> None:
        data = block_data(block, self.dset)
        chunks, fill, codec, sums = self.dset.chunks, self.dset.fillvalue, self.chunk_codec, self.checksums
        pieces = list(chunk_pieces(block.start, data, chunks))
        encoded = self.executor.map_ordered(
            lambda item: encode_chunk(codec, item[2], chunks, fill, item[0], sums, self.dset.shape), pieces)
        for (_index, offset, _piece), stored in zip(pieces, encoded, strict=True):
            self.dset.id.write_direct_chunk(offset, stored, filter_mask=0)

    def _filtered(self, block: Block) -> None:
        self.dset[block.start:block.stop] = block.data
        if self.checksums is None:
            return
        chunks, fill = self.dset.chunks, self.dset.fillvalue
        for index, offset, piece in chunk_pieces(block.start, np.asarray(block.data), chunks):
            _mask, stored = self.dset.id.read_direct_chunk(offset)
            self.checksums.add(index, stored, full_chunk(piece, chunks, fill))

    def finish(self) -> ArchiveResult:
        """Checksums and metadata (after the data: sources may add metadata while producing it), then publish."""
        if self.checksums is not None:
            self.checksums.save(self.file)
        if self.spec.provenance:
            write_source_metadata(self.dset, self.spec.layout, self.info.metadata, self.spec.codec.config())
        if self.received is not None:
            write_received(self.dset, self.received)
        assert self._stack is not None
        self._finished = True
        self._stack.close()  # closes the file, syncs it and gives it its name
        self._stack = None
        path = Path(self.spec.path)
        return ArchiveResult(path, self.spec.codec, self.chunks, self.chunk_codec is not None, self.reason,
                             self.spec.layout, self.target, path.stat().st_size, self.checksums is not None)

    def abort(self) -> None:
        """Close and delete the partial file."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            with contextlib.suppress(_Aborted):
                stack.__exit__(_Aborted, _Aborted(), None)


def write_received(dset: h5py.Dataset, received: np.ndarray) -> None:
    """The ``received`` mask beside ``dset`` (True: the frame arrived; False: the fill value stands in)."""
    mask = dset.parent.create_dataset(RECEIVED, data=received, compression="gzip")
    mask.attrs["description"] = ("True where the scan position's frame was received; elsewhere the data holds "
                                 "the fill value")
    dset.attrs["frames_missing"] = int(received.size - np.count_nonzero(received))


def _delete_unless_finished(sink: ArchiveSink, path: Path) -> None:
    if not getattr(sink, "_finished", False):
        path.unlink(missing_ok=True)


class _Aborted(Exception):
    """Raised into the output's context so ``atomic_output`` deletes the partial file."""


def write_archive(source: Any, spec: ArchiveSpec, *, workers: int | None = 1, progress: Any = None) -> ArchiveResult:
    """``source`` (a source or a ``BlockStream``) written by one ``ArchiveSink`` on ``workers`` threads."""
    from stempress.engine import run
    from stempress.exec.local import ThreadExecutor

    with ThreadExecutor(workers) as executor:
        (result,) = run(source, [ArchiveSink(spec)], executor=executor, progress=progress)
    return result
