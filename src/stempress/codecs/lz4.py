"""LZ4 (filter 32004, H5Zlz4.c): BE uint64 size, BE uint32 block size, then per block a BE uint32 length and an
LZ4 block, stored raw (length == block size) when LZ4 would not shrink it."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numcodecs import lz4 as nc_lz4

from stempress.codecs.base import Hdf5Codec
from stempress.codecs.chunk_codec import as_chunk, header_check, raw_bytes

LZ4_ID = 32004
_DEFAULT_BLOCK = 1 << 30  # H5Zlz4.c DEFAULT_BLOCK_SIZE: LZ4 needs blocks < 1.9 GB


@dataclass(frozen=True)
class Lz4(Hdf5Codec):
    """LZ4 in blocks of ``nbytes`` (0: the filter's default, 1 GiB)."""

    codec_id = "lz4"
    family = "lz4"
    filter_ids = (LZ4_ID,)

    nbytes: int = 0

    def h5_kwargs(self) -> dict[str, Any]:
        return dict(self.plugin().LZ4(nbytes=self.nbytes))

    @classmethod
    def settings_from_cd_values(cls, values: tuple[int, ...]) -> dict[str, Any]:
        """cd_values: (block bytes,), or none for the default."""
        return {"nbytes": values[0] if values else 0}

    def encode(self, chunk: np.ndarray) -> bytes:
        raw = memoryview(raw_bytes(chunk))
        total = len(raw)
        block = min(self.nbytes or _DEFAULT_BLOCK, total) or 1
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
        header_check(total, shape, dtype, self.name)
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
        return as_chunk(out, shape, dtype, self.name)
