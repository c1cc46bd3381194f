"""One HDF5 chunk in, the exact bytes its filter pipeline stores out (and back), so chunks can be compressed off
the HDF5 thread and written with ``write_direct_chunk``.

HDF5 runs a dataset's filters on one thread. Producing the same stored bytes in Python, with libraries that
release the GIL (zlib, bz2, numcodecs' Blosc/Zstd/LZ4, bitshuffle), lets a thread pool compress while the file
stays standard: the pipeline is still declared on the dataset, so plain h5py + hdf5plugin read our chunks and we
read theirs. Formats were checked against the filter sources shipped by hdf5plugin and against chunks the
filters wrote (tests/test_chunk_codec.py); most encoders here are byte-identical to the filter's.

``encode`` takes the FULL chunk (HDF5 pads edge chunks to the chunk shape with the fill value) as a C-contiguous
array of the dataset's dtype; ``decode`` returns the full chunk, possibly read-only.
"""

from __future__ import annotations

import bz2
import ctypes
import glob
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numcodecs import blosc as nc_blosc
from numcodecs import lz4 as nc_lz4
from numcodecs import zstd as nc_zstd

from stempress.codecs.catalog import Codec

if TYPE_CHECKING:
    import blosc2


@cache
def _blosc2() -> Any:
    """python-blosc2, imported on first use: it takes ~0.1 s to import, which a Blosc1 or gzip write never needs."""
    try:
        import blosc2
    except ImportError:  # pragma: no cover - a dependency; Blosc2 then falls back to the filter path
        return None
    return blosc2

try:  # optional: the bitshuffle transform + LZ4/Zstd exactly as the 32008 filter applies them
    import bitshuffle
except ImportError:
    bitshuffle = None

#: Requirement that enables direct chunks for the Bitshuffle filter (32008).
BITSHUFFLE_REQUIREMENT = "bitshuffle>=0.5.2"


@runtime_checkable
class ChunkCodec(Protocol):
    """Encodes a full chunk to the bytes one HDF5 filter pipeline stores for it, and back."""

    name: str

    def encode(self, chunk: np.ndarray) -> bytes: ...

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray: ...


def _contiguous(chunk: np.ndarray) -> np.ndarray:
    return chunk if chunk.flags.c_contiguous else np.ascontiguousarray(chunk)


def _expected_nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64)) * np.dtype(dtype).itemsize


def _as_chunk(buffer: bytes | bytearray | memoryview | np.ndarray, shape: Sequence[int], dtype: np.dtype,
              what: str) -> np.ndarray:
    """View decoded bytes as the chunk, refusing a size that does not match (a corrupt or foreign chunk)."""
    expected = _expected_nbytes(shape, dtype)
    if isinstance(buffer, np.ndarray):
        flat = np.ascontiguousarray(buffer).reshape(-1).view(np.uint8)
    else:
        flat = np.frombuffer(buffer, dtype=np.uint8)
    if flat.size != expected:
        raise ValueError(f"{what} decoded to {flat.size} bytes, expected {expected} for a {tuple(shape)} chunk")
    return flat.view(np.dtype(dtype)).reshape(tuple(shape))


def _header_check(total: int, shape: Sequence[int], dtype: np.dtype, what: str) -> None:
    expected = _expected_nbytes(shape, dtype)
    if total != expected:
        raise ValueError(f"{what} header says {total} bytes, expected {expected} for a {tuple(shape)} chunk")


# --- HDF5 built-ins: none, shuffle (2), deflate (1) -------------------------------------------------------------

def hdf5_shuffle(chunk: np.ndarray) -> np.ndarray:
    """HDF5's byte shuffle (filter 2): all first bytes of the elements, then all second bytes, ..."""
    flat = _contiguous(chunk).reshape(-1).view(np.uint8)
    itemsize = chunk.dtype.itemsize
    if itemsize == 1:
        return flat
    return np.ascontiguousarray(flat.reshape(-1, itemsize).T).reshape(-1)


def hdf5_unshuffle(data: bytes | bytearray | memoryview | np.ndarray, itemsize: int) -> np.ndarray:
    """Inverse of :func:`hdf5_shuffle` (uint8 out)."""
    flat = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    if itemsize == 1:
        return flat
    if flat.size % itemsize:
        raise ValueError(f"shuffled chunk of {flat.size} bytes is not a whole number of {itemsize}-byte elements")
    return np.ascontiguousarray(flat.reshape(itemsize, -1).T).reshape(-1)


@dataclass(frozen=True)
class RawChunks:
    """No filter: the stored chunk is the raw bytes."""

    name: str = "none"

    def encode(self, chunk: np.ndarray) -> bytes:
        return _contiguous(chunk).tobytes()

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return _as_chunk(data, shape, dtype, self.name)


@dataclass(frozen=True)
class DeflateChunks:
    """Filter 1 (optionally after shuffle, filter 2): each chunk is one zlib stream, as ``compress2`` makes it."""

    name: str
    level: int
    shuffle: bool = False

    def encode(self, chunk: np.ndarray) -> bytes:
        data = hdf5_shuffle(chunk) if self.shuffle else _contiguous(chunk).reshape(-1).view(np.uint8)
        return zlib.compress(data, self.level)

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        raw = zlib.decompress(data, bufsize=max(1, _expected_nbytes(shape, dtype)))
        if self.shuffle:
            _as_chunk(raw, shape, dtype, self.name)  # size check before the transpose
            return _as_chunk(hdf5_unshuffle(raw, np.dtype(dtype).itemsize), shape, dtype, self.name)
        return _as_chunk(raw, shape, dtype, self.name)


# --- plugin filters: BZip2 (307), Zstd (32015), LZ4 (32004), Blosc (32001) -------------------------------------

@dataclass(frozen=True)
class Bzip2Chunks:
    """Filter 307: one bzip2 stream per chunk (``BZ2_bzBuffToBuffCompress`` = Python's ``bz2.compress``)."""

    name: str
    blocksize: int = 9

    def encode(self, chunk: np.ndarray) -> bytes:
        return bz2.compress(_contiguous(chunk).reshape(-1).view(np.uint8), self.blocksize)

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return _as_chunk(bz2.decompress(data), shape, dtype, self.name)


@dataclass(frozen=True)
class ZstdChunks:
    """Filter 32015: one plain zstd frame per chunk."""

    name: str
    level: int

    def encode(self, chunk: np.ndarray) -> bytes:
        return nc_zstd.compress(_contiguous(chunk), self.level)

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return _as_chunk(nc_zstd.decompress(data), shape, dtype, self.name)


_LZ4_DEFAULT_BLOCK = 1 << 30  # H5Zlz4.c DEFAULT_BLOCK_SIZE: LZ4 needs blocks < 1.9 GB


@dataclass(frozen=True)
class Lz4Chunks:
    """Filter 32004 (H5Zlz4.c): BE uint64 size, BE uint32 block size, then per block a BE uint32 length and an
    LZ4 block, stored raw (length == block size) when LZ4 would not shrink it."""

    name: str
    block_nbytes: int = 0

    def encode(self, chunk: np.ndarray) -> bytes:
        raw = memoryview(_contiguous(chunk).reshape(-1).view(np.uint8))
        total = len(raw)
        block = min(self.block_nbytes or _LZ4_DEFAULT_BLOCK, total) or 1
        parts: list[bytes | memoryview] = [struct.pack(">QI", total, block)]
        for start in range(0, total, block):
            piece = raw[start:start + block]
            packed = memoryview(nc_lz4.compress(piece))[4:]  # numcodecs prefixes a LE size; the filter does not
            if len(packed) >= len(piece):
                packed = piece
            parts += [struct.pack(">I", len(packed)), packed]
        return b"".join(parts)

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        view = memoryview(data)
        total, block = struct.unpack_from(">QI", view, 0)
        _header_check(total, shape, dtype, self.name)
        out = np.empty(total, dtype=np.uint8)
        pos, done = 12, 0
        while done < total:
            size = min(block, total - done)
            (stored,) = struct.unpack_from(">I", view, pos)
            pos += 4
            if pos + stored > len(view):
                raise ValueError(f"{self.name} block at byte {pos} runs past the end of the chunk")
            if stored == size:
                out[done:done + size] = np.frombuffer(view[pos:pos + stored], dtype=np.uint8)
            else:
                nc_lz4.decompress(struct.pack("<I", size) + view[pos:pos + stored], out[done:done + size])
            pos += stored
            done += size
        return _as_chunk(out, shape, dtype, self.name)


_BLOSC_SHUFFLE = {"none": 0, "byte": 1, "bit": 2}


@dataclass(frozen=True)
class BloscChunks:
    """Filter 32001: one Blosc1 buffer per chunk, typesize = the dtype's size, automatic block size.

    numcodecs' Blosc is the same c-blosc the filter bundles and, off the main thread, runs a GIL-free context.
    """

    name: str
    cname: str
    clevel: int
    shuffle: str

    def encode(self, chunk: np.ndarray) -> bytes:
        return nc_blosc.compress(_contiguous(chunk), self.cname.encode(), self.clevel, _BLOSC_SHUFFLE[self.shuffle])

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        if len(data) < 16:
            raise ValueError(f"{self.name} chunk of {len(data)} bytes is shorter than a Blosc header")
        (nbytes,) = struct.unpack_from("<I", data, 4)  # Blosc1 header: version, versionlz, flags, typesize, nbytes
        _header_check(nbytes, shape, dtype, self.name)
        out = np.empty(tuple(shape), dtype=dtype)
        nc_blosc.decompress(data, out)
        return out


# --- Blosc2 (32026) ---------------------------------------------------------------------------------------------

@cache
def _blosc2_blocksize(nbytes: int, typesize: int, clevel: int, cname: str) -> int:
    """The block size the filter asks c-blosc2 for (``compute_blosc2_blocksize``: default params, zero chunk)."""
    b2 = _blosc2()
    probe = b2.compress2(bytes(nbytes), typesize=typesize, clevel=clevel, codec=b2.Codec[cname.upper()],
                         splitmode=b2.SplitMode.FORWARD_COMPAT_SPLIT, nthreads=1)
    return int(b2.get_cbuffer_sizes(probe)[2])


def b2nd_block_shape(block_nbytes: int, typesize: int, chunk_shape: Sequence[int]) -> tuple[int, ...]:
    """The filter's ``compute_b2nd_block_shape``: start at 2 per axis (1 where the chunk is 1), double from the
    innermost axis while the block stays within ``block_nbytes``."""
    nitems = block_nbytes // typesize
    dims = [1 if c == 1 else 2 for c in chunk_shape]
    count = int(np.prod(dims))
    while count < nitems:
        before = count
        for i in range(len(chunk_shape) - 1, -1, -1):
            if dims[i] * 2 <= chunk_shape[i]:
                if count * 2 <= nitems:
                    count *= 2
                    dims[i] *= 2
            elif dims[i] < chunk_shape[i]:
                grown = (count // dims[i]) * chunk_shape[i]
                if grown <= nitems:
                    count = grown
                    dims[i] = chunk_shape[i]
        if count == before:
            break
    return tuple(dims)


@dataclass(frozen=True)
class Blosc2Chunks:
    """Filter 32026: a serialized super-chunk; for 2..8-D chunks a b2nd array of the chunk shape with the block
    shape the filter computes (so b2nd-aware readers slice it), which is what the filter stores.

    python-blosc2 holds the GIL while compressing, so parallelism comes from c-blosc2's own ``threads``, not from
    a caller's thread pool (decompression does release it).
    """

    name: str
    cname: str
    clevel: int
    shuffle: str
    threads: int = 1

    def _cparams(self, typesize: int) -> blosc2.CParams:
        b2 = _blosc2()
        return b2.CParams(
            codec=b2.Codec[self.cname.upper()], clevel=self.clevel, typesize=typesize, nthreads=self.threads,
            filters=[b2.Filter.NOFILTER] * 5 + [b2.Filter(_BLOSC_SHUFFLE[self.shuffle])],
            filters_meta=[0] * 6, splitmode=b2.SplitMode.FORWARD_COMPAT_SPLIT,
        )

    def encode(self, chunk: np.ndarray) -> bytes:
        chunk = _contiguous(chunk)
        typesize = chunk.dtype.itemsize
        cparams = self._cparams(typesize)
        if 1 < chunk.ndim <= 8:
            block = _blosc2_blocksize(chunk.nbytes, typesize, self.clevel, self.cname)
            blocks = b2nd_block_shape(block, typesize, chunk.shape)
            return bytes(_blosc2().asarray(chunk, chunks=chunk.shape, blocks=blocks, cparams=cparams).to_cframe())
        schunk = _blosc2().SChunk(chunksize=chunk.nbytes, data=chunk.reshape(-1).view(np.uint8), cparams=cparams)
        return bytes(schunk.to_cframe())

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        schunk = _blosc2().schunk_from_cframe(data, copy=False)
        if "b2nd" in schunk.meta:
            array = _blosc2().ndarray_from_cframe(data)
            if tuple(array.shape) != tuple(shape):
                raise ValueError(f"{self.name} chunk holds shape {tuple(array.shape)}, expected {tuple(shape)}")
            return _as_chunk(np.ascontiguousarray(array[...]), shape, dtype, self.name)
        return _as_chunk(schunk.decompress_chunk(0), shape, dtype, self.name)


# --- Bitshuffle (32008) -----------------------------------------------------------------------------------------

_omp_state = threading.local()


@cache
def _bitshuffle_openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime the bitshuffle wheel bundles, if any (it parallelizes each call over blocks)."""
    if bitshuffle is None:
        return None
    package = os.path.dirname(bitshuffle.__file__)
    for path in sorted(glob.glob(os.path.join(package, os.pardir, "bitshuffle.libs", "libgomp*"))):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _one_openmp_thread() -> None:
    """Run bitshuffle's OpenMP loop on this thread only: the caller's pool is the parallelism, and nested OpenMP
    teams oversubscribe the cores (seen as several times slower per call on 2 cores, not a benchmark).
    The setting is per thread."""
    if getattr(_omp_state, "done", False):
        return
    runtime = _bitshuffle_openmp()
    if runtime is not None:
        runtime.omp_set_num_threads(1)
    _omp_state.done = True


def bitshuffle_block_size(itemsize: int) -> int:
    """bshuf_default_block_size: ~8 KiB of elements, a multiple of 8, at least 128 (stable across versions)."""
    return max(((8192 // itemsize) // 8) * 8, 128)


@dataclass(frozen=True)
class BitshuffleChunks:
    """Filter 32008 with compression: BE uint64 chunk bytes, BE uint32 block bytes, then per block a BE uint32
    length + LZ4/Zstd of the bit-shuffled block; the last <8 elements are copied (bshuf_blocked_wrap_fun)."""

    name: str
    cname: str
    clevel: int = 3
    nelems: int = 0

    def encode(self, chunk: np.ndarray) -> bytes:
        _one_openmp_thread()
        flat = _contiguous(chunk).reshape(-1)
        block = self.nelems or bitshuffle_block_size(flat.dtype.itemsize)
        if self.cname == "lz4":
            body = bitshuffle.compress_lz4(flat, block)
        else:
            body = bitshuffle.compress_zstd(flat, block, self.clevel)
        return struct.pack(">QI", flat.nbytes, block * flat.dtype.itemsize) + body.tobytes()

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        _one_openmp_thread()
        dtype = np.dtype(dtype)
        total, block_bytes = struct.unpack_from(">QI", data, 0)
        _header_check(total, shape, dtype, self.name)
        if block_bytes % dtype.itemsize:
            raise ValueError(f"{self.name} block of {block_bytes} bytes is not whole {dtype.itemsize}-byte elements")
        body = np.frombuffer(data, dtype=np.uint8, offset=12)
        count = total // dtype.itemsize
        block = block_bytes // dtype.itemsize
        if self.cname == "lz4":
            out = bitshuffle.decompress_lz4(body, (count,), dtype, block)
        else:
            out = bitshuffle.decompress_zstd(body, (count,), dtype, block)
        return out.reshape(tuple(shape))


# --- which codecs, and why not ----------------------------------------------------------------------------------

_SUPPORTED_KINDS = "biuf"


def direct_chunk_reason(codec: Codec, dtype: np.dtype | None = None) -> str | None:
    """None when ``codec``'s chunks can be made here without HDF5; otherwise why they cannot (one line)."""
    if codec.storage != "hdf5":
        return f"{codec.name} is a file format, not an HDF5 filter pipeline"
    unavailable = codec.unavailable_reason()
    if unavailable:
        return f"the filter itself is unavailable: {unavailable}"
    if dtype is not None and (np.dtype(dtype).kind not in _SUPPORTED_KINDS or np.dtype(dtype).hasobject):
        return f"dtype {np.dtype(dtype)} is not a plain numeric type"
    p, family = codec.params, codec.family
    if family in ("none", "zstd", "lz4", "bzip2"):
        return None
    if family == "hdf5-builtin":
        if p["filter"] == "gzip":
            return None
        if p["filter"] == "lzf":
            return ("lzf (32000): h5py compiles LZF into its filter only and no dependency exposes it to Python "
                    "with the GIL released")
        if p["filter"] == "szip":
            return "szip (4): libaec is not exposed to Python by any dependency"
        return f"HDF5 built-in filter {p['filter']!r} has no direct-chunk encoder"
    if family == "blosc":
        if p["cname"] not in nc_blosc.list_compressors():
            return f"numcodecs' Blosc here lacks the {p['cname']!r} compressor"
        return None
    if family == "blosc2":
        if _blosc2() is None:
            return "python-blosc2 is not installed; pip install blosc2"
        if p["cname"].upper() not in _blosc2().Codec.__members__:
            return f"python-blosc2 here lacks the {p['cname']!r} codec"
        return None
    if family == "bitshuffle":
        if bitshuffle is None:
            return f"the bitshuffle package is not installed (pip install '{BITSHUFFLE_REQUIREMENT}')"
        if p.get("cname") not in ("lz4", "zstd"):
            return f"bitshuffle without lz4/zstd compression ({p.get('cname')!r}) is not covered"
        if p["cname"] == "zstd" and not getattr(bitshuffle, "__zstd__", False):
            return "this bitshuffle build has no zstd support"
        return None
    return f"no direct-chunk encoder for the {family!r} family"


def chunk_codec_for(codec: Codec, dtype: np.dtype, *, threads: int = 1) -> ChunkCodec | None:
    """The chunk codec producing exactly what ``codec.h5_kwargs()`` stores, or None (see
    :func:`direct_chunk_reason`). ``threads`` is only used by Blosc2, whose compressor holds the GIL."""
    if direct_chunk_reason(codec, dtype) is not None:
        return None
    p, family, name = codec.params, codec.family, codec.name
    if family == "none":
        return RawChunks(name)
    if family == "hdf5-builtin":
        return DeflateChunks(name, int(p["level"]), bool(p.get("shuffle")))
    if family == "zstd":
        return ZstdChunks(name, int(p["clevel"]))
    if family == "bzip2":
        return Bzip2Chunks(name, int(p.get("blocksize", 9)))
    if family == "lz4":
        return Lz4Chunks(name, int(p.get("nbytes", 0)))
    if family == "blosc":
        return BloscChunks(name, p["cname"], int(p["clevel"]), p["shuffle"])
    if family == "blosc2":
        return Blosc2Chunks(name, p["cname"], int(p["clevel"]), p["shuffle"], max(1, int(threads)))
    if family == "bitshuffle":
        return BitshuffleChunks(name, p["cname"], int(p.get("clevel", 3)), int(p.get("nelems", 0)))
    return None  # pragma: no cover - direct_chunk_reason covers every family
