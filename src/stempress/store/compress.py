"""Compress a cube into one standard HDF5 file, fast (chunks compressed on every core) and safe.

Safe means (``stempress.atomic.atomic_output``): the file appears under its name only when complete and on
disk (written as a hidden ``.OUT.PID-HOST.XXXXXXXX.partial`` beside OUT, fsynced, linked or renamed, folder
fsynced), and never replaces an existing OUT without ``force``, even one another process wrote meanwhile; an
exception or Ctrl-C deletes the partial; SIGKILL or a power cut can leave the partial behind but never a wrong
OUT, and the next write of the same OUT deletes such leftovers of dead writers, saying so. Every chunk's checksum
(stored and raw bytes) goes into the file, so ``verify`` can prove later that nothing changed.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stempress.atomic import check_new_output, remove_stale_partials
from stempress.codecs.catalog import CATALOG, Codec, get_codec
from stempress.codecs.chunk_codec import direct_chunk_reason
from stempress.codecs.chunking import chunk_shape
from stempress.cores import resolve_workers
from stempress.data.base import Dataset4D, check_shape_dtype, nbytes
from stempress.data.emd import data_path
from stempress.engine import run
from stempress.errors import StempressError
from stempress.exec.base import Executor
from stempress.exec.local import ThreadExecutor
from stempress.exec.processes import ProcessExecutor, local_processes
from stempress.progress import Progress
from stempress.sinks.archive import ArchiveSink, ArchiveSpec
from stempress.sinks.shards import ShardedArchiveSink, check_new_shards, shard_folder
from stempress.sizes import GIB, human_size
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


@dataclass(frozen=True)
class CompressReport:
    """What was written, how, and how fast: ``seconds`` is the write (reading the source, compressing, syncing and
    renaming), without the benchmark ``codec="auto"`` runs first (``bench.recommend.compress_auto``)."""

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
    #: Seconds per stage of the archive writer (``ArchiveResult.stages``): where the time went.
    stages: dict[str, float] = field(default_factory=dict)
    #: Shard files in ``OUT.shards/`` behind the master ``path`` (``shards=True``); 0 for one file.
    shards: int = 0

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
        if self.shards:
            done += f"; a master over {self.shards} shard files in {shard_folder(self.path).name}/ (move them together)"
        if self.layout == ENTROPY_CODEC:  # stempress's own format: only stempress reads it
            return done
        opening = cube_open_lines(self.path, self.layout, self.dataset_path, get_codec(self.codec).filters)
        return "\n".join([done, *opening])


def compress(source: Dataset4D, out: Path | str, *, codec: str = DEFAULT_CODEC,
             chunks: str | tuple[int, ...] | None = None, workers: int | None = None, layout: str = "emd",
             dataset_path: str | None = None, force: bool = False,
             progress: Progress | None = None, executor: Executor | None = None,
             shards: bool = False) -> CompressReport:
    """Write ``source`` to ``out`` compressed with ``codec`` and return what happened.

    ``codec="auto"`` (benchmark a sample, then write with the winner) is the benchmark's, a layer above:
    ``stempress.bench.recommend.compress_auto``. ``workers`` defaults to the cores this process may run on.
    ``progress(bytes_done, bytes_total)`` counts raw bytes written. ``chunks`` defaults to ``balanced``.
    ``executor`` (e.g. a ``DaskExecutor``; the caller closes it) compresses the chunks instead of ``workers``
    threads; one writer in this process stores them in grid order, so the file is the same byte for byte.
    ``shards``: one file per partition in ``OUT.shards/``, written where the partition is compressed, plus ``out``
    as the master file whose virtual dataset shows one cube (``sinks.shards``): no single writer.

    ``codec="entropy_poisson"`` writes integer counts as the entropy-coded event file instead (``layout`` does not
    apply; ``chunks``' scan rows, default about 8 MiB of frames, set its coded chunks); its ``workers`` are
    processes, so a script using them keeps its work under ``if __name__ == "__main__":``.
    """
    out = Path(out)
    check_shape_dtype(tuple(source.shape), np.dtype(source.dtype), source.name)
    if codec.strip().lower() == ENTROPY_CODEC:
        if shards:
            raise StempressError(f"codec {ENTROPY_CODEC} writes its own file format, not HDF5 shards; drop --shards "
                                 f"or choose an HDF5 codec such as {DEFAULT_CODEC}")
        if executor is not None and executor.remote and not isinstance(executor, ProcessExecutor):
            raise StempressError(f"codec {ENTROPY_CODEC} codes on this machine's processes; drop --dask, or "
                                 f"choose an HDF5 codec such as {DEFAULT_CODEC}")
        return _compress_entropy(source, out, chunks, workers, force, progress, executor)
    chunks_t = check_hdf5_output(source, out, chunks, layout, dataset_path, force, shards=shards)
    n_workers = executor.workers if executor is not None else resolve_workers(workers)
    chosen = resolve_codec(codec)
    removed = remove_stale_partials(out)
    started = time.perf_counter()  # the write only: reading the source, compressing, syncing, renaming
    spec = ArchiveSpec(out, chosen, chunks_t, layout, dataset_path, force)
    sink = ShardedArchiveSink(spec) if shards else ArchiveSink(spec)
    # an executor the caller gave stays theirs to close; else threads of our own
    with contextlib.nullcontext(executor) if executor is not None else ThreadExecutor(n_workers) as pool:
        (written,) = run(source, [sink], executor=pool, progress=progress)
    return CompressReport(path=out, codec=chosen.name, chunks=chunks_t, workers=n_workers, direct=written.direct,
                          fallback_reason=written.fallback_reason, layout=layout, dataset_path=written.dataset_path,
                          raw_bytes=nbytes(source), file_bytes=written.file_bytes,
                          seconds=time.perf_counter() - started, removed_partials=removed,
                          stages=written.stages, shards=written.shards)


def check_hdf5_output(source: Dataset4D, out: Path, chunks: str | tuple[int, ...] | None, layout: str,
                      dataset_path: str | None, force: bool, *, shards: bool = False) -> tuple[int, int, int, int]:
    """The chunk shape (``balanced`` by default), after refusing a bad layout, dataset path or an existing ``out``
    (with ``shards``, its shard folder too): before any work, the benchmark of codec "auto" included."""
    data_path(layout, dataset_path)
    if shards:
        check_new_shards(out, force)
    else:
        check_new_output(out, force)
    return chunk_shape("balanced" if chunks is None else chunks, tuple(source.shape))


def _compress_entropy(source: Dataset4D, out: Path, chunks: str | tuple[int, ...] | None, workers: int | None,
                      force: bool, progress: Progress | None, executor: Executor | None = None) -> CompressReport:
    """``codec="entropy_poisson"``: the counts entropy-coded, with the source's calibration and provenance."""
    from stempress.data.entropy import default_chunk_rows  # the codec's modules load only when asked for
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
    removed = remove_stale_partials(out)
    started = time.perf_counter()
    # the caller's process executor, else worker processes of our own (constriction holds the GIL: no threads)
    with local_processes(workers, executor) as pool:
        n_workers = pool.workers if pool is not None else 1
        write_entropy_events(source, out, force=force, executor=pool, chunk_rows=rows)
    if progress is not None:
        progress(nbytes(source), nbytes(source))
    return CompressReport(path=out, codec=codec.name, chunks=(rows, shape[1], shape[2], shape[3]), workers=n_workers,
                          direct=True, fallback_reason=None, layout=ENTROPY_CODEC, dataset_path="/",
                          raw_bytes=nbytes(source), file_bytes=out.stat().st_size,
                          seconds=time.perf_counter() - started, removed_partials=removed)


def direct_codecs() -> list[str]:
    """HDF5 codecs this process can write chunk by chunk in parallel: the candidates for ``codec="auto"``."""
    return [c.name for c in CATALOG.values()
            if c.storage == "hdf5" and c.family != "none" and c.available and direct_chunk_reason(c) is None]


def resolve_codec(name: str) -> Codec:
    """The HDF5 codec to write with; "auto" (benchmark first) is refused here, one layer too low for it."""
    if name.strip().lower() == AUTO:
        raise StempressError("codec 'auto' benchmarks a sample of the source first, which store.compress does not "
                             "do: call stempress.bench.recommend.compress_auto (as `stempress compress --codec auto` "
                             f"does), or give a codec such as {DEFAULT_CODEC}")
    codec = get_codec(name)
    if codec.storage != "hdf5":
        raise StempressError(f"codec {codec.name!r} is a file format, not an HDF5 filter, so it cannot store an "
                             f"HDF5 cube; choose an HDF5 codec such as {DEFAULT_CODEC} (list: stempress codecs), "
                             f"or {ENTROPY_CODEC} for integer counts")
    problem = codec.unavailable_reason()
    if problem:
        raise StempressError(f"codec {codec.name!r} cannot write here: {problem}")
    return codec
