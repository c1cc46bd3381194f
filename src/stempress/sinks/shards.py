"""``--shards``: one HDF5 file per partition, written by the workers, plus a master file whose HDF5 virtual dataset
shows one cube. For when the one writer of ``ArchiveSink`` (the client storing every compressed chunk) is the limit:
here every worker writes its own partition's file, and the client writes only the small master at the end.

Layout: ``OUT`` (the master) and ``OUT.shards/rows-START-STOP.h5`` beside it; the virtual dataset names the shards
by paths relative to the master's folder, so the two move together. Each shard is a complete archive of its scan
rows as ``compress`` writes it (the same codec, layout, chunks and per-chunk checksums), so it opens on its own too.

Shard edges fall on chunk rows (the engine cuts partitions on the sink's ``row_multiple``, the chunk's scan rows),
so every chunk lives in exactly one shard and is stored byte for byte as in the one-file archive; a last shard
shorter than a chunk row keeps the whole chunk (its scan axis is extendable, as HDF5 requires for that).

Atomic as a whole: shards go into a hidden staging folder (named like ``atomic_output``'s partials, so a killed
run's leftover is removed by the next write of ``OUT.shards``), each shard itself written atomically by its worker;
``finish`` renames the staging folder to ``OUT.shards`` and then writes the master atomically. On failure neither
the master nor ``OUT.shards`` remains.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.atomic import (
    PARTIAL_SUFFIX,
    atomic_output,
    check_new_output,
    partial_prefix,
    remove_stale_partials,
    writing,
)
from stempress.codecs.chunking import chunk_shape
from stempress.data.base import Block
from stempress.data.emd import data_path, prepare_layout, write_source_metadata
from stempress.errors import StempressError
from stempress.sinks.archive import ArchiveResult, ArchiveSink, ArchiveSpec
from stempress.sinks.protocol import RunInfo

SHARDS_SUFFIX = ".shards"
#: The master's attribute listing its shards (relative paths, in row order).
SHARDS_ATTR = "stempress_shards"
#: Scan rows per shard when the run streams (one process): shards of about this size.
SHARD_BYTES = 256 * 1024**2


def shard_folder(out: Path) -> Path:
    """Where the shards of master ``out`` go: ``OUT.shards`` beside it."""
    return out.with_name(out.name + SHARDS_SUFFIX)


def shard_name(rows: tuple[int, int]) -> str:
    """A shard's file name, from its scan rows (deterministic: a recomputed partition writes the same name)."""
    return f"rows-{rows[0]:07d}-{rows[1]:07d}.h5"


def check_new_shards(out: Path, force: bool) -> None:
    """Refuse an existing master or shard folder unless ``force``, before any work."""
    check_new_output(out, force)
    folder = shard_folder(out)
    if not force and (folder.exists() or folder.is_symlink()):
        raise StempressError(f"{folder} already exists (the shards of an earlier write); pass --force to replace "
                             "it, or choose another name")


class ShardedArchiveSink:
    """The archive as shards plus a master. Mergeable on every executor: ``partial(rows)`` is a ``ShardWriter``
    that writes its rows' file wherever it runs (a Dask worker, a process, a thread); ``merge`` only records it.
    With one worker (or a source that cannot be reopened) blocks stream here and shards are cut of about
    ``SHARD_BYTES`` each."""

    name = "archive"

    def __init__(self, spec: ArchiveSpec, *, name: str = "archive") -> None:
        self.spec, self.name = spec, name
        self.target = data_path(spec.layout, spec.dataset_path)
        if spec.codec is None or spec.chunks is None or spec.filter_kwargs is not None or spec.truth is not None:
            raise StempressError("--shards writes a codec's chunks into one file per partition; give a codec and "
                                 "chunks (not a contiguous layout)")
        check_new_shards(Path(spec.path), spec.force)
        self.row_multiple = 1
        self._staging: Path | None = None
        self._published: Path | None = None
        self._writer: ShardWriter | None = None

    def open(self, info: RunInfo) -> None:
        out = Path(self.spec.path)
        self.info = info
        self.chunks = chunk_shape(self.spec.chunks, info.shape)  # type: ignore[arg-type]
        self.row_multiple = self.chunks[0]
        folder = shard_folder(out)
        remove_stale_partials(folder)
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=partial_prefix(folder),
                                                  suffix=PARTIAL_SUFFIX))
        self.shard_spec = replace(self.spec, path=self._staging, chunks=self.chunks, force=True, whole_chunks=True)
        self.written: dict[tuple[int, int], ArchiveResult] = {}
        row_bytes = int(np.prod(info.shape[1:])) * info.dtype.itemsize
        self._stream_rows = max(1, SHARD_BYTES // max(1, row_bytes * self.chunks[0])) * self.chunks[0]

    # -- partitions: a writer per partition, wherever it runs ----------------------------------------------
    def partial(self, rows: tuple[int, int]) -> ShardWriter:
        return ShardWriter(self.shard_spec, (int(rows[0]), int(rows[1])))

    def merge(self, part: ShardWriter) -> None:
        assert part.result is not None, "a shard comes back written"
        self.written[part.rows] = part.result

    # -- one stream: shards cut here -----------------------------------------------------------------------
    def consume(self, block: Block) -> None:
        start = block.start
        while start < block.stop:
            writer = self._writer_for(start)
            stop = min(block.stop, writer.rows[1])
            writer.consume(_rows_of(block, start, stop))  # finishes the shard at its last row
            if writer.result is not None:
                self.merge(writer)
                self._writer = None
            start = stop

    def _writer_for(self, row: int) -> ShardWriter:
        if self._writer is None:
            rows = (row, min(self.info.shape[0], row + self._stream_rows))
            self._writer = self.partial(rows)
            self._writer.open(self.info.for_rows(*rows))
        return self._writer

    # -- the end -----------------------------------------------------------------------------------------------
    def finish(self) -> ArchiveResult:
        out = Path(self.spec.path)
        ranges = sorted(self.written)
        edges = [r for pair in ranges for r in pair]
        if not ranges or edges[0] != 0 or edges[-1] != self.info.shape[0] or any(
                a[1] != b[0] for a, b in itertools.pairwise(ranges)):
            raise StempressError(f"the shards written cover scan rows {ranges}, not 0-{self.info.shape[0]}; "
                                 "nothing was published")
        with writing(out):
            self._publish_shards()
            master = self._write_master(ranges)
        results = [self.written[r] for r in ranges]
        stages: dict[str, float] = {}
        for result in results:
            for key, value in result.stages.items():
                stages[key] = stages.get(key, 0.0) + value
        first = results[0]
        total = master.stat().st_size + sum(r.file_bytes for r in results)
        return ArchiveResult(out, self.spec.codec, self.chunks, first.direct, first.fallback_reason,
                             self.spec.layout, self.target, total, first.checksums_saved, stages, len(ranges))

    def _publish_shards(self) -> None:
        folder = shard_folder(Path(self.spec.path))
        assert self._staging is not None
        if folder.exists() or folder.is_symlink():
            if not self.spec.force:
                raise StempressError(f"{folder} appeared while this write was running and was left as it is; pass "
                                     "--force to replace it, or choose another name")
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
            else:
                folder.unlink()
        self._staging.rename(folder)
        self._staging, self._published = None, folder

    def _write_master(self, ranges: list[tuple[int, int]]) -> Path:
        out = Path(self.spec.path)
        info, spec = self.info, self.spec
        layout = h5py.VirtualLayout(shape=info.shape, dtype=info.dtype)
        names = [f"{shard_folder(out).name}/{shard_name(r)}" for r in ranges]
        for (start, stop), name in zip(ranges, names, strict=True):
            layout[start:stop] = h5py.VirtualSource(name, self.target, shape=(stop - start, *info.shape[1:]),
                                                    dtype=info.dtype)
        with atomic_output(out, force=spec.force) as tmp, h5py.File(tmp, "w") as f:
            group, dname = prepare_layout(f, spec.layout, info.metadata, spec.dataset_path)
            dset = group.create_virtual_dataset(dname, layout, fillvalue=0)
            if spec.provenance:
                write_source_metadata(dset, spec.layout, info.metadata, spec.codec.config() if spec.codec else None)
            dset.attrs[SHARDS_ATTR] = np.array(names, dtype=h5py.string_dtype())
        self._published = None
        return out

    def abort(self) -> None:
        """Drop the staging folder (and a shard folder published by this run whose master never came)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.abort()
            self._writer = None
        for folder in (self._staging, self._published):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self._staging = self._published = None


class ShardWriter:
    """One partition's shard: an ``ArchiveSink`` over the partition's rows (rebased to start at 0), writing
    ``rows-START-STOP.h5`` in the staging folder. Picklable before ``open``; after ``finish`` it carries only its
    ``ArchiveResult`` back."""

    name = "archive"

    def __init__(self, spec: ArchiveSpec, rows: tuple[int, int]) -> None:
        self.spec, self.rows = spec, rows
        self.result: ArchiveResult | None = None
        self._sink: ArchiveSink | None = None

    def open(self, info: RunInfo) -> None:
        folder = Path(self.spec.path)
        if not folder.is_dir():  # the run was given up (its staging folder removed): write nothing
            raise StempressError(f"{folder} is gone: the run writing these shards stopped")
        start, stop = self.rows
        self._sink = ArchiveSink(replace(self.spec, path=folder / shard_name(self.rows)))
        self._sink.open(RunInfo(info.name, (stop - start, *info.shape[1:]), info.dtype, info.metadata))

    def consume(self, block: Block) -> None:
        """Store the rows; the block holding the shard's last row also publishes it (the engine hands a part back
        without finishing it: merging is the client's)."""
        assert self._sink is not None
        self._sink.consume(Block(block.start - self.rows[0], block.data, block.valid, block.frame_ids))
        if block.stop >= self.rows[1]:
            self.finish()

    def finish(self) -> ShardWriter:
        if self._sink is not None:
            self.result, self._sink = self._sink.finish(), None
        return self

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()
            self._sink = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sink"] = None  # an open file never travels (a finished writer holds none)
        return state


def _rows_of(block: Block, start: int, stop: int) -> Block:
    """Scan rows ``[start, stop)`` of ``block``."""
    a, b = start - block.start, stop - block.start
    return Block(start, block.data[a:b], None if block.valid is None else block.valid[a:b],
                 None if block.frame_ids is None else block.frame_ids[a:b])


def shard_sources(dset: h5py.Dataset) -> list[tuple[int, int, Path, str]]:
    """A master's shards: (first scan row, stop row, shard file, dataset path), in row order; [] for a dataset
    that is not virtual. Relative names resolve against the master's folder, as HDF5 resolves them."""
    if not dset.is_virtual:
        return []
    folder = Path(dset.file.filename).parent
    found = []
    for source in dset.virtual_sources():
        start, stop = source.vspace.get_select_bounds()
        path = Path(source.file_name)
        found.append((int(start[0]), int(stop[0]) + 1, path if path.is_absolute() else folder / path,
                      source.dset_name))
    return sorted(found)

