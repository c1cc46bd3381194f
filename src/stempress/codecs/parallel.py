"""Compress and decompress HDF5 chunks in a thread pool while the file stays a standard HDF5 file.

HDF5's filter pipeline runs on the calling thread only. Here a pool of workers runs the codec (see
``chunk_codec``: same bytes the declared filter stores) and the calling thread alone talks to HDF5 through
``write_direct_chunk`` / ``read_direct_chunk``. Chunks are stored in chunk-grid order, whatever the worker
count, so the file is deterministic; at most ``max_in_flight`` chunks (default two per worker) are queued, so
memory is a block plus a few chunks per worker, never the cube.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from stempress.codecs.base import ChunkCodec
from stempress.codecs.catalog import Codec
from stempress.codecs.chunk_codec import chunk_codec_for, direct_chunk_reason
from stempress.codecs.hdf5_store import dataset_blocks
from stempress.codecs.none import Uncompressed as RawChunks
from stempress.data.base import Block
from stempress.data.checksums import ChunkChecksums, chunk_crcs
from stempress.data.hdf5 import STUDY_EMD_PATH
from stempress.errors import StempressError

Index = tuple[int, ...]


def chunk_grid(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    """Chunks along each axis (edge chunks count)."""
    return tuple(-(-int(n) // int(c)) for n, c in zip(shape, chunks, strict=True))


def scan_position(index: Index, chunks: Sequence[int], shape: Sequence[int]) -> str:
    """Where a chunk sits in the scan, for error messages: 'scan rows 16-31, columns 0-15 (chunk (1, 0, 0, 0))'."""
    (r0, r1), (c0, c1) = (
        (i * c, min((i + 1) * c, n) - 1) for i, c, n in zip(index[:2], chunks[:2], shape[:2], strict=True)
    )
    return f"scan rows {r0}-{r1}, columns {c0}-{c1} (chunk {tuple(int(i) for i in index)})"


def _default_in_flight(workers: int, max_in_flight: int | None) -> int:
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    bound = max_in_flight if max_in_flight is not None else 2 * workers
    if bound < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {bound}")
    return bound


def _chunked(dataset: h5py.Dataset) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if dataset.chunks is None:
        raise StempressError(f"dataset {dataset.name} is contiguous; direct chunk I/O needs a chunked dataset")
    return tuple(dataset.shape), tuple(dataset.chunks)


# --- writing ----------------------------------------------------------------------------------------------------

def block_data(block: Block, dataset: h5py.Dataset) -> np.ndarray:
    """The block as the dataset's dtype, refusing blocks that are not whole chunk rows (HDF5 would have to
    read back and recompress a half-written chunk, which direct writes cannot do)."""
    shape, chunks = _chunked(dataset)
    return whole_chunk_rows(block, shape, chunks, dataset.dtype, dataset.name)


def whole_chunk_rows(block: Block, shape: Sequence[int], chunks: Sequence[int], dtype: np.dtype,
                     name: str) -> np.ndarray:
    """``block_data`` from the dataset's shape, chunks and dtype alone (a worker that has no file open)."""
    shape, chunks = tuple(shape), tuple(chunks)
    data = np.asarray(block.data)
    if data.ndim != len(shape) or data.shape[1:] != shape[1:]:
        raise StempressError(f"block of shape {data.shape} does not fit dataset {name} of shape {shape}")
    if block.start % chunks[0] or (block.stop != shape[0] and data.shape[0] % chunks[0]) or block.stop > shape[0]:
        raise StempressError(
            f"block rows {block.start}-{block.stop} are not whole chunk rows of {chunks[0]} scan rows "
            f"(dataset has {shape[0]}); feed blocks through the engine, which cuts them on chunk rows"
        )
    if data.dtype != dtype:
        if not np.can_cast(data.dtype, dtype, "safe"):
            raise StempressError(f"block dtype {data.dtype} cannot be stored losslessly as {dtype}")
        data = data.astype(dtype)
    return data


def chunk_pieces(
    block_start: int, data: np.ndarray, chunks: tuple[int, ...]
) -> Iterator[tuple[Index, Index, np.ndarray]]:
    """(chunk index, chunk offset, view of the block inside that chunk) in chunk-grid order."""
    grid = chunk_grid(data.shape, chunks)
    first_row = block_start // chunks[0]
    for local in itertools.product(*(range(g) for g in grid)):
        offset = tuple(i * c for i, c in zip(local, chunks, strict=True))
        view = data[tuple(slice(o, o + c) for o, c in zip(offset, chunks, strict=True))]
        index = (first_row + local[0], *local[1:])
        yield index, (block_start + offset[0], *offset[1:]), view


def full_chunk(piece: np.ndarray, chunks: tuple[int, ...], fill: object) -> np.ndarray:
    """The chunk as HDF5 stores it: edge chunks padded to the full shape with the dataset's fill value."""
    if piece.shape == chunks:
        return np.ascontiguousarray(piece)
    full = np.full(chunks, fill, dtype=piece.dtype)
    full[tuple(slice(0, n) for n in piece.shape)] = piece
    return full


#: Chunks up to this size are gathered into one buffer per thread, reused chunk after chunk: a fresh array per
#: chunk costs a page fault per 4 KiB on every chunk (on 2 cores, the gather of an 8 MiB chunk went from ~3 ms to
#: ~1 ms of CPU, as much as LZ4 itself saves over the filter path; the encode stage of benchmarks/parallel_vs_filter.py
#: includes the gather). Larger chunks allocate (memory stays bounded).
SCRATCH_MAX_BYTES = 64 * 1024**2
_scratch = threading.local()


def gathered_chunk(piece: np.ndarray, chunks: tuple[int, ...], fill: object) -> np.ndarray:
    """``full_chunk`` of ``piece``, for an encoder: the piece itself when it already is a whole contiguous chunk,
    else copied into this thread's reusable buffer, so the result is only valid until this thread's next call."""
    if piece.shape == chunks and piece.flags.c_contiguous:
        return piece
    nbytes = int(np.prod(chunks, dtype=np.int64)) * piece.dtype.itemsize
    if nbytes > SCRATCH_MAX_BYTES or piece.dtype.hasobject:
        return full_chunk(piece, chunks, fill)
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _scratch.buffer = np.empty(nbytes, np.uint8)
    out = buffer[:nbytes].view(piece.dtype).reshape(chunks)
    if piece.shape == chunks:
        np.copyto(out, piece)
    else:  # an edge chunk: the fill value around the piece, as np.full (full_chunk) makes it
        np.copyto(out, fill, casting="unsafe")
        out[tuple(slice(0, n) for n in piece.shape)] = piece
    return out


def _encoded(codec: ChunkCodec, chunk: np.ndarray, index: Index, chunks: tuple[int, ...],
             shape: Sequence[int]) -> bytes:
    try:
        stored = codec.encode(chunk)
    except StempressError:
        raise
    except Exception as exc:
        raise StempressError(f"compressing {scan_position(index, chunks, shape)} with {codec.name} failed: {exc}") \
            from exc
    return stored if isinstance(stored, bytes) else bytes(stored)  # never a view of the reused gather buffer


@dataclass(frozen=True)
class ChunkEncoder:
    """One chunk's work as a picklable task: ``(index, piece) -> (stored bytes, stored CRC, raw CRC, timings)``.

    Why a module-level class holding only the codec's configuration: a remote executor (processes, Dask) must
    pickle the task, and a worker there cannot fill the writer's checksum record, so the CRCs travel back with
    the bytes (``ChunkChecksums.add_values``). ``algorithm`` None: no checksums (both CRCs 0). The chunk is
    gathered once (``gathered_chunk``), and encoded and checksummed from that one copy in the same task."""

    codec: ChunkCodec
    chunks: tuple[int, ...]
    fill: object
    shape: tuple[int, ...]
    algorithm: str | None

    def __call__(self, item: tuple[Index, np.ndarray]) -> tuple[bytes, int, int, float, float]:
        """(stored bytes, stored CRC, raw CRC, CPU seconds encoding incl. gathering, CPU seconds checksumming).
        This thread's CPU time, not the clock: on a machine busier than its cores the clock would count the time
        the thread waited for a core, and the sums would no longer say what the work costs."""
        index, piece = item
        t0 = time.thread_time()
        chunk = gathered_chunk(piece, self.chunks, self.fill)
        stored = _encoded(self.codec, chunk, index, self.chunks, self.shape)
        t1 = time.thread_time()
        stored_crc, raw_crc = chunk_crcs(self.algorithm, stored, chunk) if self.algorithm else (0, 0)
        return stored, stored_crc, raw_crc, t1 - t0, time.thread_time() - t1


# --- reading ----------------------------------------------------------------------------------------------------

@dataclass
class _OutBlock:
    start: int
    data: np.ndarray
    remaining: int


def _filter_count(dataset: h5py.Dataset) -> int:
    return dataset.id.get_create_plist().get_nfilters()


def _read_stored(dataset: h5py.Dataset, offset: Index) -> tuple[int, bytes | None]:
    """(filter mask, stored bytes), or (0, None) for a chunk never written (it reads as the fill value)."""
    try:
        return dataset.id.read_direct_chunk(offset)
    except Exception:
        info = dataset.id.get_chunk_info_by_coord(offset)
        if info.byte_offset is None:
            return 0, None
        raise


def _decode(codec: ChunkCodec, stored: bytes | None, chunks: tuple[int, ...], dtype: np.dtype, fill: object,
            index: Index, checksums: ChunkChecksums | None,
            targets: list[tuple[np.ndarray, tuple[slice, ...], tuple[slice, ...]]]) -> None:
    """Worker: check, decode and copy one chunk into the blocks it overlaps."""
    if stored is None:
        chunk = np.full(chunks, fill, dtype=dtype)
    else:
        if checksums is not None:
            problem = checksums.check_chunk(index, stored=stored)
            if problem:
                raise ValueError(problem)
        chunk = codec.decode(stored, chunks, dtype)
        if checksums is not None:
            problem = checksums.check_chunk(index, raw=chunk)
            if problem:
                raise ValueError(problem)
    for out, dst, src in targets:
        out[dst] = chunk[src]


def read_chunks_parallel(
    dataset: h5py.Dataset,
    codec: ChunkCodec,
    *,
    workers: int,
    rows: int,
    checksums: ChunkChecksums | None = None,
    max_in_flight: int | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Block]:
    """Yield the dataset in blocks of ``rows`` scan rows, in order, decoding chunks in ``workers`` threads.

    ``start``/``stop``: only those scan rows (a partition; both on chunk rows, or ``stop`` the end), in blocks of
    ``rows`` from ``start``.

    Chunks are read on the calling thread; a chunk that HDF5 stored with every filter skipped (optional filters
    do this for incompressible data) is taken as raw bytes, one with only some filters skipped, one that fails
    to decode or (with ``checksums``) fails its CRCs raises a StempressError naming its scan position. Choose
    ``rows`` as a multiple of the chunk's scan rows or chunks on block borders are decoded once but copied twice.
    """
    shape, chunks = _chunked(dataset)
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    stop = shape[0] if stop is None else stop
    if not 0 <= start <= stop <= shape[0] or start % chunks[0] or (stop % chunks[0] and stop != shape[0]):
        raise ValueError(f"rows {start}-{stop} of {shape[0]} do not fall on chunk rows of {chunks[0]}")
    bound = _default_in_flight(workers, max_in_flight)
    dtype, fill = dataset.dtype, dataset.fillvalue
    all_skipped = (1 << _filter_count(dataset)) - 1
    raw_codec = RawChunks()
    grid = chunk_grid(shape, chunks)
    per_chunk_row = int(np.prod(grid[1:], dtype=np.int64))
    n_blocks = -(-(stop - start) // rows)
    blocks: dict[int, _OutBlock] = {}

    def out_block(k: int) -> _OutBlock:
        if k not in blocks:
            first, last = start + k * rows, min(start + (k + 1) * rows, stop)
            chunk_rows = (last - 1) // chunks[0] - first // chunks[0] + 1
            blocks[k] = _OutBlock(first, np.empty((last - first, *shape[1:]), dtype=dtype),
                                  chunk_rows * per_chunk_row)
        return blocks[k]

    def targets(index: Index) -> tuple[list[int], list[tuple[np.ndarray, tuple[slice, ...], tuple[slice, ...]]]]:
        lo = tuple(i * c for i, c in zip(index, chunks, strict=True))
        hi = tuple(min(o + c, n) for o, c, n in zip(lo, chunks, shape, strict=True))
        inner_src = tuple(slice(0, h - o) for o, h in zip(lo[1:], hi[1:], strict=True))
        inner_dst = tuple(slice(o, h) for o, h in zip(lo[1:], hi[1:], strict=True))
        ks, out = [], []
        for k in range((lo[0] - start) // rows, (hi[0] - 1 - start) // rows + 1):
            block = out_block(k)
            r0, r1 = max(lo[0], block.start), min(hi[0], block.start + block.data.shape[0])
            ks.append(k)
            out.append((block.data, (slice(r0 - block.start, r1 - block.start), *inner_dst),
                        (slice(r0 - lo[0], r1 - lo[0]), *inner_src)))
        return ks, out

    pending: deque[tuple[Index, list[int], Future[None]]] = deque()
    next_block = 0

    def finish_head() -> Iterator[Block]:
        nonlocal next_block
        index, ks, future = pending.popleft()
        try:
            future.result()
        except Exception as exc:
            raise StempressError(
                f"{scan_position(index, chunks, shape)} of {dataset.name} could not be read as {codec.name}: {exc}; "
                "the file is corrupt or was written with another filter"
            ) from exc
        for k in ks:
            blocks[k].remaining -= 1
        while next_block < n_blocks and next_block in blocks and blocks[next_block].remaining == 0:
            done = blocks.pop(next_block)
            next_block += 1
            yield Block(done.start, done.data)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stempress-decode") as pool:
        try:
            chunk_rows = range(start // chunks[0], -(-stop // chunks[0]))
            for index in itertools.product(chunk_rows, *(range(g) for g in grid[1:])):
                while len(pending) >= bound:  # before reading, so at most `bound` stored chunks are held
                    yield from finish_head()
                offset = tuple(i * c for i, c in zip(index, chunks, strict=True))
                mask, stored = _read_stored(dataset, offset)
                chunk_codec = codec
                if mask:
                    if mask & all_skipped != all_skipped:
                        raise StempressError(
                            f"{scan_position(index, chunks, shape)} of {dataset.name} was stored with filter mask "
                            f"{mask:#x} (some filters skipped); read it through h5py's filter path instead"
                        )
                    chunk_codec = raw_codec
                ks, outs = targets(index)
                future = pool.submit(_decode, chunk_codec, stored, chunks, dtype, fill, index, checksums, outs)
                pending.append((index, ks, future))
            while pending:
                yield from finish_head()
        finally:
            for *_, future in pending:
                future.cancel()


# --- whole cubes ------------------------------------------------------------------------------------------------

def _pipeline_ids(dataset: h5py.Dataset) -> tuple[int, ...]:
    plist = dataset.id.get_create_plist()
    return tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))


def read_parallel_cube_blocks(
    path: Path,
    rows: int,
    codec: Codec,
    workers: int,
    dataset_path: str = STUDY_EMD_PATH,
    *,
    verify_checksums: bool = False,
) -> Iterator[Block]:
    """Like ``hdf5_store.read_cube_blocks``, decoding in ``workers`` threads; codecs without a chunk codec read
    through the filter path. ``verify_checksums`` checks every chunk against the CRCs saved with it."""
    with h5py.File(path, "r") as f:
        dataset = f[dataset_path]
        chunk_codec = chunk_codec_for(codec, dataset.dtype) if dataset.chunks else None
        if chunk_codec is not None and _pipeline_ids(dataset) != codec.filters:
            raise StempressError(
                f"{path}:{dataset_path} uses filters {list(_pipeline_ids(dataset))}, not {codec.name}'s "
                f"{list(codec.filters)}; read it with the codec it was written with"
            )
        record = None
        if verify_checksums:
            record = ChunkChecksums.load(f, dataset.name)
            if record is None:
                raise StempressError(f"{path} has no chunk checksums for {dataset_path}; write it with checksums")
            if chunk_codec is None:
                raise StempressError(
                    f"checksums are verified while decoding chunks, which {codec.name} cannot do here: "
                    f"{direct_chunk_reason(codec, dataset.dtype)}"
                )
        if chunk_codec is None:
            yield from dataset_blocks(dataset, rows)
            return
        yield from read_chunks_parallel(dataset, chunk_codec, workers=workers, rows=rows, checksums=record)
