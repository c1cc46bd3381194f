"""One HDF5 chunk in, the exact bytes its filter pipeline stores out (and back), so chunks can be compressed off
the HDF5 thread and written with ``write_direct_chunk``.

HDF5 runs a dataset's filters on one thread. Producing the same stored bytes in Python, with libraries that
release the GIL (zlib, bz2, numcodecs' Blosc/Zstd/LZ4, bitshuffle), lets a thread pool compress while the file
stays standard: the pipeline is still declared on the dataset, so plain h5py + hdf5plugin read our chunks and we
read theirs. Each codec family's module (``deflate``, ``blosc``, ...) holds its encoder beside its filter keywords;
this module holds what they share (the ``ChunkCodec`` protocol itself lives beside ``Codec`` in ``codecs.base``).
Formats were checked against the filter sources shipped by hdf5plugin and against chunks the filters wrote
(tests/codecs/test_chunk_codec.py); most encoders are byte-identical to the filter's.

``encode`` takes the FULL chunk (HDF5 pads edge chunks to the chunk shape with the fill value) as a C-contiguous
array of the dataset's dtype; ``decode`` returns the full chunk, possibly read-only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stempress.codecs.base import ChunkCodec, Codec


def direct_chunk_reason(codec: Codec, dtype: np.dtype | None = None) -> str | None:
    """None when ``codec``'s chunks can be made here without HDF5; otherwise why they cannot (one line)."""
    return codec.direct_chunk_reason(dtype)


def chunk_codec_for(codec: Codec, dtype: np.dtype, *, threads: int = 1) -> ChunkCodec | None:
    """The chunk codec producing exactly what ``codec.h5_kwargs()`` stores, or None (see
    :func:`direct_chunk_reason`). ``threads`` is only used by Blosc2, whose compressor holds the GIL."""
    return codec.chunk_codec(dtype, threads=threads)


def contiguous(chunk: np.ndarray) -> np.ndarray:
    return chunk if chunk.flags.c_contiguous else np.ascontiguousarray(chunk)


def raw_bytes(chunk: np.ndarray) -> np.ndarray:
    """The chunk's bytes in memory order, as a flat uint8 view where possible."""
    return contiguous(chunk).reshape(-1).view(np.uint8)


def expected_nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64)) * np.dtype(dtype).itemsize


def as_chunk(buffer: bytes | bytearray | memoryview | np.ndarray, shape: Sequence[int], dtype: np.dtype,
             what: str) -> np.ndarray:
    """View decoded bytes as the chunk, refusing a size that does not match (a corrupt or foreign chunk)."""
    expected = expected_nbytes(shape, dtype)
    if isinstance(buffer, np.ndarray):
        flat = np.ascontiguousarray(buffer).reshape(-1).view(np.uint8)
    else:
        flat = np.frombuffer(buffer, dtype=np.uint8)
    if flat.size != expected:
        raise ValueError(f"{what} decoded to {flat.size} bytes, expected {expected} for a {tuple(shape)} chunk")
    return flat.view(np.dtype(dtype)).reshape(tuple(shape))


def header_check(total: int, shape: Sequence[int], dtype: np.dtype, what: str) -> None:
    """Refuse a chunk whose header announces another size than the chunk shape holds."""
    expected = expected_nbytes(shape, dtype)
    if total != expected:
        raise ValueError(f"{what} header says {total} bytes, expected {expected} for a {tuple(shape)} chunk")
