"""Blosc2 (filter 32026): a serialized super-chunk per chunk; for 2..8-D chunks a b2nd array of the chunk shape
with the block shape the filter computes (so b2nd-aware readers slice it), which is what the filter stores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import numpy as np

from stempress.codecs.base import ChunkCodec, Hdf5Codec
from stempress.codecs.blosc import CNAME_CODES, SHUFFLE_MODES, name_of
from stempress.codecs.chunk_codec import as_chunk, contiguous
from stempress.errors import require_choice


@cache
def _blosc2() -> Any:
    """python-blosc2, imported on first use: it takes ~0.1 s to import, which a Blosc1 or gzip write never needs
    (and ``compress`` starts up faster without it)."""
    try:
        import blosc2
    except ImportError:  # pragma: no cover - a dependency; Blosc2 then falls back to the filter path
        return None
    return blosc2

BLOSC2_ID = 32026
_CNAMES = tuple(c for c in CNAME_CODES if c != "snappy")  # c-blosc2 dropped snappy


@cache
def _blosc2_blocksize(nbytes: int, typesize: int, clevel: int, cname: str) -> int:
    """The block size the filter asks c-blosc2 for (``compute_blosc2_blocksize``: default params, zero chunk)."""
    blosc2 = _blosc2()
    probe = blosc2.compress2(bytes(nbytes), typesize=typesize, clevel=clevel, codec=blosc2.Codec[cname.upper()],
                             splitmode=blosc2.SplitMode.FORWARD_COMPAT_SPLIT, nthreads=1)
    return int(blosc2.get_cbuffer_sizes(probe)[2])


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
class Blosc2(Hdf5Codec):
    """Blosc2 with one compressor, level and shuffle mode.

    python-blosc2 holds the GIL while compressing, so parallelism comes from c-blosc2's own ``threads`` (a
    setting of this process, not of the configuration), not from a caller's thread pool (decompression does
    release it).
    """

    codec_id = "blosc2"
    family = "blosc2"
    filter_ids = (BLOSC2_ID,)

    cname: str
    clevel: int
    shuffle: str = "byte"
    threads: int = field(default=1, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        require_choice(self.cname, _CNAMES, "Blosc2 compressor", self.name)
        require_choice(self.shuffle, tuple(SHUFFLE_MODES), "Blosc2 shuffle", self.name)

    def h5_kwargs(self) -> dict[str, Any]:
        flt = self.plugin().Blosc2(cname=self.cname, clevel=self.clevel, filters=SHUFFLE_MODES[self.shuffle])
        return dict(flt)

    @classmethod
    def settings_from_cd_values(cls, values: tuple[int, ...]) -> dict[str, Any]:
        """cd_values: (filter version, blosc2 format, typesize, chunk bytes, clevel, filter, compressor, ndim,
        chunk shape...)."""
        return {"clevel": values[4], "shuffle": name_of(values[5], SHUFFLE_MODES),
                "cname": name_of(values[6], CNAME_CODES)}

    def encoder_problem(self) -> str | None:
        blosc2 = _blosc2()
        if blosc2 is None:
            return "python-blosc2 is not installed; pip install blosc2"
        if self.cname.upper() not in blosc2.Codec.__members__:
            return f"python-blosc2 here lacks the {self.cname!r} codec"
        return None

    def chunk_codec(self, dtype: np.dtype, *, threads: int = 1) -> ChunkCodec | None:
        if self.direct_chunk_reason(dtype) is not None:
            return None
        return replace(self, threads=max(1, int(threads)))

    def _cparams(self, typesize: int) -> Any:
        blosc2 = _blosc2()
        return blosc2.CParams(
            codec=blosc2.Codec[self.cname.upper()], clevel=self.clevel, typesize=typesize, nthreads=self.threads,
            filters=[blosc2.Filter.NOFILTER] * 5 + [blosc2.Filter(SHUFFLE_MODES[self.shuffle])],
            filters_meta=[0] * 6, splitmode=blosc2.SplitMode.FORWARD_COMPAT_SPLIT,
        )

    def encode(self, chunk: np.ndarray) -> bytes:
        blosc2 = _blosc2()
        chunk = contiguous(chunk)
        typesize = chunk.dtype.itemsize
        cparams = self._cparams(typesize)
        if 1 < chunk.ndim <= 8:
            block = _blosc2_blocksize(chunk.nbytes, typesize, self.clevel, self.cname)
            blocks = b2nd_block_shape(block, typesize, chunk.shape)
            return bytes(blosc2.asarray(chunk, chunks=chunk.shape, blocks=blocks, cparams=cparams).to_cframe())
        schunk = blosc2.SChunk(chunksize=chunk.nbytes, data=chunk.reshape(-1).view(np.uint8), cparams=cparams)
        return bytes(schunk.to_cframe())

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        blosc2 = _blosc2()
        schunk = blosc2.schunk_from_cframe(data, copy=False)
        if "b2nd" in schunk.meta:
            array = blosc2.ndarray_from_cframe(data)
            if tuple(array.shape) != tuple(shape):
                raise ValueError(f"{self.name} chunk holds shape {tuple(array.shape)}, expected {tuple(shape)}")
            return as_chunk(np.ascontiguousarray(array[...]), shape, dtype, self.name)
        return as_chunk(schunk.decompress_chunk(0), shape, dtype, self.name)
