"""One measurement: write a cube with one method, read it back, verify it, and time both under a protocol."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py

from stempress.bench.baselines import file_format
from stempress.bench.protocol import (
    Protocol,
    Stopwatch,
    evict_from_page_cache,
    fsync_path,
    peak_rss_bytes,
    reset_peak_rss,
)
from stempress.bench.verify import Reference
from stempress.codecs.catalog import Codec
from stempress.codecs.chunking import PAPER_CHUNKINGS, chunk_shape, chunking_label
from stempress.codecs.hdf5_store import dataset_blocks
from stempress.data.base import DEFAULT_BLOCK_BYTES, Block, Dataset4D, iter_blocks, nbytes, rows_for_budget
from stempress.data.hdf5 import STUDY_EMD_PATH
from stempress.data.stream import BlockStream
from stempress.engine import run
from stempress.errors import StempressError
from stempress.exec.local import ThreadExecutor
from stempress.sinks.archive import ArchiveSink, ArchiveSpec

GIB = 1024**3
MIB = 1024**2

#: The chunking column of the non-HDF5 baselines, which have no chunks.
NO_CHUNKING = "n/a"

#: Write paths: HDF5's single-threaded filter pipeline (the study's) or our parallel direct-chunk writer.
FILTER, PARALLEL = "filter", "parallel"
PATHS = (FILTER, PARALLEL)

#: Where the test file holds the cube. ``study``: a dataset ``data`` at the file root, as the study's benchmark
#: script writes it (so ratios equal its script's to the byte); ``emd``: the EMD 1.0 path its cubes are read
#: from, whose groups add a few kB per file (a few % of the ratio on small, sparse cubes).
Layout = Literal["study", "emd"]
LAYOUTS: dict[str, str] = {"study": "data", "emd": STUDY_EMD_PATH}
DEFAULT_LAYOUT: Layout = "study"


def layout_path(layout: str) -> str:
    """The dataset path of a layout, or a one-line error naming the choices."""
    if layout not in LAYOUTS:
        raise StempressError(f"--layout {layout!r} is unknown; use {' or '.join(LAYOUTS)}")
    return LAYOUTS[layout]


@dataclass(frozen=True)
class Method:
    """A codec with its chunking: the unit the study names ``{chunking}_{codec}``."""

    codec: Codec
    chunking: str | tuple[int, ...] | None
    path: str = FILTER
    workers: int = 1

    @property
    def path_name(self) -> str:
        """The baselines are plain Python file writers: neither HDF5 path applies."""
        return NO_CHUNKING if self.chunking is None else self.path

    @property
    def chunking_name(self) -> str:
        return NO_CHUNKING if self.chunking is None else chunking_label(self.chunking)

    @property
    def name(self) -> str:
        return self.codec.name if self.chunking is None else f"{self.chunking_name}_{self.codec.name}"

    def chunks_for(self, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
        return None if self.chunking is None else chunk_shape(self.chunking, shape)


def split_method(method: str) -> tuple[str, str]:
    """The inverse of :attr:`Method.name`: ``balanced_blosc_zstd`` -> (``balanced``, ``blosc_zstd``).

    Works on the study's method names too; a name without a chunking prefix is a baseline.
    """
    for chunking in PAPER_CHUNKINGS:
        if method.startswith(chunking + "_"):
            return chunking, method[len(chunking) + 1:]
    if method.startswith("chunks_"):
        label, _, codec = method.partition("_")[2].partition("_")
        return f"chunks_{label}", codec
    return NO_CHUNKING, method


def methods_for(
    codecs: list[Codec], chunkings: list[str | tuple[int, ...]], paths: Sequence[str] = (FILTER,), workers: int = 1
) -> list[Method]:
    """Every HDF5 codec under every chunking and write path; file baselines once (neither applies to them)."""
    methods: list[Method] = []
    for codec in codecs:
        if codec.storage == "file":
            methods.append(Method(codec, None))
        else:
            methods.extend(Method(codec, chunking, path, workers) for path in paths for chunking in chunkings)
    return methods


def unavailable_reason(method: Method, dtype: Any = None) -> str | None:
    """Why a method cannot be measured here: a missing filter or library, a dtype the codec cannot store, or no
    direct-chunk encoder for the parallel path."""
    reason = method.codec.unavailable_reason() or (method.codec.unavailable_for(dtype) if dtype is not None else None)
    if reason is None and method.path == PARALLEL and method.chunking is not None:
        from stempress.codecs.chunk_codec import direct_chunk_reason

        direct = direct_chunk_reason(method.codec)
        if direct:
            reason = f"no parallel direct-chunk writer ({direct}); only the filter path can write it"
    return reason


def block_rows(source: Dataset4D, chunks: tuple[int, ...] | None) -> int:
    """Rows per block, whole chunk rows so no chunk is written twice."""
    return rows_for_budget(source, DEFAULT_BLOCK_BYTES, multiple=chunks[0] if chunks else 1)


def measure(
    source: Dataset4D,
    method: Method,
    workdir: Path,
    *,
    protocol: Protocol = "warm",
    time_limit_s: float | None = None,
    reference: Reference | None = None,
    layout: Layout = DEFAULT_LAYOUT,
) -> dict[str, Any]:
    """Write, read back and verify once; returns the measured numbers (raises on a mismatch or time limit).

    Timed as the study: the write from creating the file to closing it; the read of the data only (HDF5 files
    are opened before the clock starts and closed after it stops, as the study times ``dset[:]``).
    """
    dataset_path = layout_path(layout)
    shape, dtype = source.shape, source.dtype
    chunks = method.chunks_for(shape)
    rows = block_rows(source, chunks)
    raw_bytes = nbytes(source)
    reference = reference or Reference(shape, dtype)
    suffix = ".h5" if chunks is not None else file_format(method.codec).suffix  # raw_csr insists on .toml
    path = workdir / f".stempress-bench-{uuid.uuid4().hex}{suffix}"
    written: list[Path] = [path]
    peak_reset = reset_peak_rss()
    try:
        with Stopwatch("write", time_limit_s, shape[0]) as write_watch:
            blocks = write_watch.exclude(_recorded(iter_blocks(source, rows), reference), _rows)
            if chunks is None:
                written = file_format(method.codec).write(path, blocks, shape, dtype)
            else:
                parallel = method.path == PARALLEL
                spec = ArchiveSpec(path, method.codec, tuple(chunks), layout="plain", dataset_path=dataset_path,
                                   checksums=False, direct=None if parallel else False, provenance=False,
                                   durable=False)
                with ThreadExecutor(method.workers if parallel else 1) as executor:
                    run(BlockStream(blocks, shape, dtype, source.name), [ArchiveSink(spec)], executor=executor)
            if protocol == "cold":
                for p in written:
                    fsync_path(p)
        evicted = None
        if protocol == "cold":
            results = [evict_from_page_cache(p) for p in written]
            evicted = None if None in results else all(results)
        file_bytes = sum(p.stat().st_size for p in written)

        with contextlib.ExitStack() as opened:
            dataset = None if chunks is None else opened.enter_context(h5py.File(path, "r"))[dataset_path]
            with Stopwatch("read", time_limit_s, shape[0]) as read_watch:
                for block in read_watch.timed(_reader(method, path, dataset, shape, dtype, rows), _rows):
                    with read_watch.excluding():
                        reference.check(block)
        reference.finish()
        peak = peak_rss_bytes()
    finally:
        for p in written:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    write_s, read_s = write_watch.seconds, read_watch.seconds
    return {
        "chunk_size": str(tuple(chunks)) if chunks is not None else "",
        "raw_bytes": raw_bytes,
        "file_bytes": file_bytes,
        "compression_ratio": raw_bytes / file_bytes,
        "file_size_mb": file_bytes / MIB,
        "write_time": write_s,
        "read_time": read_s,
        "write_throughput_gbs": raw_bytes / GIB / write_s,
        "read_throughput_gbs": raw_bytes / GIB / read_s,
        "peak_rss_mb": peak / MIB if peak is not None and peak_reset else float("nan"),
        "evicted": evicted,
        "verified": True,
    }


def _reader(method: Method, path: Path, dataset: h5py.Dataset | None, shape: tuple[int, ...], dtype: Any,
            rows: int) -> Iterator[Block]:
    """The blocks a method reads back: from the open HDF5 dataset, or from the baseline's own files."""
    if dataset is None:
        return file_format(method.codec).read(path, shape, dtype)
    if method.path == PARALLEL:
        from stempress.codecs.chunk_codec import chunk_codec_for
        from stempress.codecs.parallel import read_chunks_parallel

        chunk_codec = chunk_codec_for(method.codec, dataset.dtype)
        if chunk_codec is not None:
            return read_chunks_parallel(dataset, chunk_codec, workers=method.workers, rows=rows)
    return dataset_blocks(dataset, rows)


def _rows(block: Block) -> int:
    return block.data.shape[0]


def _recorded(blocks: Iterator[Block], reference: Reference) -> Iterator[Block]:
    for block in blocks:
        reference.record(block)
        yield block


def parse_paths(text: str) -> list[str]:
    """'filter,parallel' -> ['filter', 'parallel']."""
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PATHS]
    if unknown or not chosen:
        raise StempressError(f"--paths {text!r}: use {' or '.join(PATHS)}, or both separated by a comma")
    return list(dict.fromkeys(chosen))
