"""Plain Zstd (filter 32015): one zstd frame per chunk."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numcodecs import zstd as nc_zstd

from stempress.codecs.base import Hdf5Codec
from stempress.codecs.chunk_codec import as_chunk, contiguous

ZSTD_ID = 32015


@dataclass(frozen=True)
class Zstd(Hdf5Codec):
    """Zstd at one level (negative levels are the fast modes)."""

    codec_id = "zstd"
    family = "zstd"
    filter_ids = (ZSTD_ID,)

    clevel: int

    def h5_kwargs(self) -> dict[str, Any]:
        return dict(self.plugin().Zstd(clevel=self.clevel))

    @classmethod
    def settings_from_cd_values(cls, values: tuple[int, ...]) -> dict[str, Any]:
        """cd_values: (clevel as an unsigned 32-bit int)."""
        level = values[0]
        return {"clevel": level - (1 << 32) if level >= 1 << 31 else level}

    def encode(self, chunk: np.ndarray) -> bytes:
        return nc_zstd.compress(contiguous(chunk), self.clevel)

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return as_chunk(nc_zstd.decompress(data), shape, dtype, self.name)
