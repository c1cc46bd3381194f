"""Compress a cube into one standard HDF5 file, fast (chunks compressed on every core) and safe.

Safe means (``stempress.atomic.atomic_output``): the file appears under its name only when complete and on
disk (written as a hidden ``.OUT.PID-HOST.XXXXXXXX.partial`` beside OUT, fsynced, linked or renamed, folder
fsynced), and never replaces an existing OUT without ``force``, even one another process wrote meanwhile; an
exception or Ctrl-C deletes the partial; SIGKILL or a power cut can leave the partial behind but never a wrong
OUT, and the next write of the same OUT deletes such leftovers of dead writers, saying so. Every chunk's checksum
(stored and raw bytes) goes into the file, so ``verify`` can prove later that nothing changed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.atomic import atomic_output, check_new_output, partial_folder, remove_stale_partials
from stempress.codecs.catalog import CATALOG, Codec, get_codec
from stempress.codecs.checksums import ChunkChecksums
from stempress.codecs.chunk_codec import ChunkCodec, chunk_codec_for, direct_chunk_reason
from stempress.codecs.chunking import chunk_shape
from stempress.codecs.hdf5_store import create_cube_dataset
from stempress.codecs.parallel import chunk_pieces, full_chunk, write_chunks_parallel
from stempress.cores import resolve_workers
from stempress.data.base import DEFAULT_BLOCK_BYTES, Block, Dataset4D, check_shape_dtype, nbytes, rows_for_budget
from stempress.errors import StempressError
from stempress.sizes import GIB, human_size
from stempress.store.emd import data_path, prepare_layout, write_source_metadata
from stempress.store.readers import cube_open_lines

#: Blosc1 zstd (clevel 3, byte shuffle): the study's recommended replacement for gzip-9, close to or above
#: its ratio and tens of times faster (rerun `stempress bench --methods gzip_9,blosc_zstd` on your data to see
#: both side by side); any HDF5 reader with hdf5plugin decodes it, and it compresses chunk by chunk in
#: parallel, so the write runs on every core.
DEFAULT_CODEC = "blosc_zstd"
AUTO = "auto"
#: The one file-format codec compress writes: counted electrons entropy-coded (lossless for integer counts), a
#: file of its own (``events.entropy_file``) rather than an HDF5 dataset with a filter.
ENTROPY_CODEC = "entropy_poisson"
#: Chunk bytes per worker in one block, so every worker has chunks to compress while the next block is read.
BLOCK_BYTES_PER_WORKER = 16 * 1024**2

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CompressReport:
    """What was written, how, and how fast: ``seconds`` is the write (reading the source, compressing, syncing and
    renaming), without the benchmark ``codec="auto"`` runs first."""

    path: Path
    codec: str
    chunks: tuple[int, int, int, int]
    workers: int
    direct: bool
    fallback_reason: str | None
    layout: str
    dataset_path: str
    raw_bytes: int
    file_bytes: int
    seconds: float
    chosen_why: str | None = None
    removed_partials: tuple[Path, ...] = ()

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.file_bytes if self.file_bytes else float("nan")

    @property
    def gibs(self) -> float:
        """Raw GiB (1024^3, as the benchmark tables) per second of wall time."""
        return self.raw_bytes / GIB / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """What was written, then how each peer tool opens it (the filters some of them need first)."""
        path = ("entropy-coded counts (Poisson model)" if self.layout == ENTROPY_CODEC
                else "parallel direct-chunk" if self.direct else f"filter pipeline ({self.fallback_reason})")
        chunks = "x".join(str(c) for c in self.chunks)
        done = (f"{self.path}: {self.codec}, chunks {chunks}, {self.workers} workers, {path}; "
                f"{human_size(self.raw_bytes)} -> {human_size(self.file_bytes)} (ratio {self.ratio:.2f}) "
                f"in {self.seconds:.2f} s, {self.gibs:.3f} GiB/s")
        if self.layout == ENTROPY_CODEC:  # stempress's own format: only stempress reads it
            return done
        opening = cube_open_lines(self.path, self.layout, self.dataset_path, get_codec(self.codec).filters)
        return "\n".join([done, *opening])


def compress(source: Dataset4D, out: Path | str, *, codec: str = DEFAULT_CODEC,
             chunks: str | tuple[int, ...] | None = None, workers: int | None = None, layout: str = "emd",
             dataset_path: str | None = None, force: bool = False,
             progress: Progress | None = None) -> CompressReport:
    """Write ``source`` to ``out`` compressed with ``codec`` and return what happened.

    ``codec="auto"`` benchmarks a sample of the source (``recommend_source``, use case "balanced") among the
    codecs that compress in parallel and uses the winner. ``workers`` defaults to the cores this process may
    run on. ``progress(bytes_done, bytes_total)`` counts raw bytes written. ``chunks`` defaults to ``balanced``.

    ``codec="entropy_poisson"`` writes integer counts as the entropy-coded event file instead (``layout`` does not
    apply; ``chunks``' scan rows, default about 8 MiB of frames, set its coded chunks); its ``workers`` are
    processes, so a script using them keeps its work under ``if __name__ == "__main__":``.
    """
    out = Path(out)
    shape = check_shape_dtype(tuple(source.shape), np.dtype(source.dtype), source.name)
    if codec.strip().lower() == ENTROPY_CODEC:
        return _compress_entropy(source, out, chunks, workers, force, progress)
    chunks = "balanced" if chunks is None else chunks
    target = data_path(layout, dataset_path)
    check_new_output(out, force)
    n_workers = resolve_workers(workers)
    chunks_t = chunk_shape(chunks, shape)
    chosen, why = resolve_codec(codec, source, chunks_t, out)
    removed = remove_stale_partials(out)
    started = time.perf_counter()  # the write only: reading the source, compressing, syncing, renaming
    chunk_codec = chunk_codec_for(chosen, np.dtype(source.dtype), threads=n_workers)
    _write(source, out, force, _Plan(layout, target, chunks_t, chosen, chunk_codec, n_workers), progress)
    reason = None if chunk_codec is not None else (direct_chunk_reason(chosen, source.dtype) or "no chunk codec")
    return CompressReport(path=out, codec=chosen.name, chunks=chunks_t, workers=n_workers,
                          direct=chunk_codec is not None, fallback_reason=reason, layout=layout,
                          dataset_path=target, raw_bytes=nbytes(source), file_bytes=out.stat().st_size,
                          seconds=time.perf_counter() - started, chosen_why=why, removed_partials=removed)


def _compress_entropy(source: Dataset4D, out: Path, chunks: str | tuple[int, ...] | None, workers: int | None,
                      force: bool, progress: Progress | None) -> CompressReport:
    """``codec="entropy_poisson"``: the counts entropy-coded, with the source's calibration and provenance."""
    from stempress.events.entropy import default_chunk_rows  # the codec's modules load only when asked for
    from stempress.events.entropy_file import write_entropy_events

    codec = get_codec(ENTROPY_CODEC)
    problem = codec.unavailable_reason()
    if problem:
        raise StempressError(f"codec {codec.name!r} cannot write here: {problem}")
    dtype = np.dtype(source.dtype)
    if dtype.kind not in "ui":
        raise StempressError(f"{source.name}: codec {codec.name} codes integer electron counts, not {dtype} data; "
                             f"choose an HDF5 codec such as {DEFAULT_CODEC}")
    shape = tuple(source.shape)
    rows = default_chunk_rows(shape, dtype) if chunks is None else chunk_shape(chunks, shape)[0]
    n_workers = resolve_workers(workers)
    removed = remove_stale_partials(out)
    started = time.perf_counter()
    write_entropy_events(source, out, overwrite=force, workers=n_workers, chunk_rows=rows)
    if progress is not None:
        progress(nbytes(source), nbytes(source))
    return CompressReport(path=out, codec=codec.name, chunks=(rows, shape[1], shape[2], shape[3]), workers=n_workers,
                          direct=True, fallback_reason=None, layout=ENTROPY_CODEC, dataset_path="/",
                          raw_bytes=nbytes(source), file_bytes=out.stat().st_size,
                          seconds=time.perf_counter() - started, removed_partials=removed)


@dataclass(frozen=True)
class _Plan:
    """How to write: everything decided before the first byte."""

    layout: str
    dataset_path: str
    chunks: tuple[int, int, int, int]
    codec: Codec
    chunk_codec: ChunkCodec | None
    workers: int


def _write(source: Dataset4D, out: Path, force: bool, plan: _Plan, progress: Progress | None) -> None:
    """Partial file: layout, data, checksums, metadata; ``atomic_output`` syncs it and makes it OUT."""
    with atomic_output(out, overwrite=force) as tmp, h5py.File(tmp, "w") as f:
        group, name = prepare_layout(f, plan.layout, source.metadata, plan.dataset_path)
        dset = create_cube_dataset(group, name, source.shape, np.dtype(source.dtype), plan.chunks,
                                   plan.codec.h5_kwargs())
        checksums = ChunkChecksums.for_dataset(dset)
        done = _Counter(nbytes(source), progress)
        with _Prefetch(source, _block_rows(source, plan.chunks, plan.workers)) as blocks:
            if plan.chunk_codec is not None:
                write_chunks_parallel(dset, blocks, plan.chunk_codec, workers=plan.workers,
                                      checksums=checksums, progress=done.add)
            else:
                _write_filtered(dset, blocks, checksums, done.add)
        checksums.save(f)
        write_source_metadata(dset, plan.layout, source.metadata, plan.codec.config())


def direct_codecs() -> list[str]:
    """HDF5 codecs this process can write chunk by chunk in parallel: the candidates for ``codec="auto"``."""
    return [c.name for c in CATALOG.values()
            if c.storage == "hdf5" and c.family != "none" and c.available and direct_chunk_reason(c) is None]


def resolve_codec(name: str, source: Dataset4D, chunks: tuple[int, int, int, int],
                  out: Path) -> tuple[Codec, str | None]:
    """The codec to write with, and for ``auto`` why it was chosen."""
    if name.strip().lower() == AUTO:
        return _recommended(source, chunks, out)
    codec = get_codec(name)
    if codec.storage != "hdf5":
        raise StempressError(f"codec {codec.name!r} is a file format, not an HDF5 filter, so it cannot store an "
                             f"HDF5 cube; choose an HDF5 codec such as {DEFAULT_CODEC} (list: stempress codecs), "
                             f"or {ENTROPY_CODEC} for integer counts")
    problem = codec.unavailable_reason()
    if problem:
        raise StempressError(f"codec {codec.name!r} cannot write here: {problem}")
    return codec, None


def _recommended(source: Dataset4D, chunks: tuple[int, int, int, int], out: Path) -> tuple[Codec, str]:
    from stempress.bench.recommend import recommend_source  # pandas and the bench machinery: only for auto

    methods = direct_codecs()
    if not methods:
        raise StempressError("codec 'auto' found no codec that compresses in parallel here; "
                             f"pip install hdf5plugin or give a codec such as {DEFAULT_CODEC}")
    with partial_folder(out) as workdir:
        rec, _stats = recommend_source(source, "balanced", methods=methods, chunkings=[chunks], runs=1,
                                       workdir=Path(workdir))
    return get_codec(rec.codec), rec.why


def _block_rows(source: Dataset4D, chunks: tuple[int, int, int, int], workers: int) -> int:
    """Whole chunk rows per block (no chunk is ever written twice), enough to keep every worker busy."""
    return rows_for_budget(source, max(DEFAULT_BLOCK_BYTES, workers * BLOCK_BYTES_PER_WORKER), multiple=chunks[0])


class _Prefetch:
    """Blocks of ``rows`` scan rows, the next one read by a thread while the current one is compressed.

    Use as a context manager: leaving it (normally, on an error or on Ctrl-C) stops the reader thread.
    """

    def __init__(self, source: Dataset4D, rows: int, depth: int = 1) -> None:
        self.source, self.rows = source, rows
        self._items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="stempress-prefetch", daemon=True)

    def __enter__(self) -> Iterator[Block]:
        self._thread.start()
        return self._blocks()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        source, total = self.source, self.source.shape[0]
        try:
            for start in range(0, total, self.rows):
                stop = min(start + self.rows, total)
                data = source.read_rows(start, stop)
                if data.shape != (stop - start, *source.shape[1:]):
                    raise StempressError(f"source {source.name!r} returned a block of shape {data.shape} for "
                                         f"rows {start}..{stop}; fix the source's read_rows")
                if not self._put(("block", Block(start, data))):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            self._put(("error", exc))

    def _blocks(self) -> Iterator[Block]:
        while True:
            kind, value = self._items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value


def _write_filtered(dset: h5py.Dataset, blocks: Iterator[Block], checksums: ChunkChecksums,
                    progress: Callable[[int], None]) -> None:
    """The fallback: HDF5's one-threaded filter pipeline, then each stored chunk read back for its checksums."""
    chunks, fill = dset.chunks, dset.fillvalue
    for block in blocks:
        dset[block.start:block.stop] = block.data
        for index, offset, piece in chunk_pieces(block.start, block.data, chunks):
            _mask, stored = dset.id.read_direct_chunk(offset)
            checksums.add(index, stored, full_chunk(piece, chunks, fill))
        progress(block.data.nbytes)


class _Counter:
    """Turns the writers' per-block byte counts into ``progress(done, total)``."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, 0, progress

    def add(self, nbytes: int) -> None:
        self.done += int(nbytes)
        if self.progress is not None:
            self.progress(self.done, self.total)
