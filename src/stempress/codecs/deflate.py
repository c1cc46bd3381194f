"""HDF5's built-in deflate (filter 1), optionally after its byte shuffle (filter 2): the ``gzip_*`` codecs."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from stempress.codecs.base import Hdf5Codec, Pipeline
from stempress.codecs.chunk_codec import as_chunk, expected_nbytes, raw_bytes

DEFLATE_ID, SHUFFLE_ID = 1, 2


def hdf5_shuffle(chunk: np.ndarray) -> np.ndarray:
    """HDF5's byte shuffle (filter 2): all first bytes of the elements, then all second bytes, ..."""
    flat = raw_bytes(chunk)
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
class Deflate(Hdf5Codec):
    """Each chunk is one zlib stream, as HDF5's ``compress2`` makes it (after the shuffle when ``shuffle``)."""

    codec_id = "deflate"
    family = "hdf5-builtin"
    filter_ids = (DEFLATE_ID,)
    needs_plugin = False

    level: int
    shuffle: bool = False

    @property
    def filters(self) -> tuple[int, ...]:
        return (SHUFFLE_ID, DEFLATE_ID) if self.shuffle else (DEFLATE_ID,)

    @property
    def params(self) -> dict[str, Any]:
        return {"filter": "gzip", "level": self.level, **({"shuffle": True} if self.shuffle else {})}

    def h5_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"shuffle": True} if self.shuffle else {}
        return {**kwargs, "compression": "gzip", "compression_opts": self.level}

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, name: str) -> Self | None:
        ids = tuple(int(fid) for fid, _ in pipeline)
        if ids not in ((DEFLATE_ID,), (SHUFFLE_ID, DEFLATE_ID)) or not pipeline[-1][1]:
            return None
        return cls(name, level=int(pipeline[-1][1][0]), shuffle=len(ids) == 2)

    def encode(self, chunk: np.ndarray) -> bytes:
        return zlib.compress(hdf5_shuffle(chunk) if self.shuffle else raw_bytes(chunk), self.level)

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        raw = zlib.decompress(data, bufsize=max(1, expected_nbytes(shape, dtype)))
        if self.shuffle:
            as_chunk(raw, shape, dtype, self.name)  # size check before the transpose
            return as_chunk(hdf5_unshuffle(raw, np.dtype(dtype).itemsize), shape, dtype, self.name)
        return as_chunk(raw, shape, dtype, self.name)
