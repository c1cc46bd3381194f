"""BZip2 (filter 307): one bzip2 stream per chunk (``BZ2_bzBuffToBuffCompress`` = Python's ``bz2.compress``)."""

from __future__ import annotations

import bz2
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stempress.codecs.base import Hdf5Codec
from stempress.codecs.chunk_codec import as_chunk, raw_bytes

BZIP2_ID = 307


@dataclass(frozen=True)
class Bzip2(Hdf5Codec):
    """BZip2 with ``blocksize`` x 100 kB blocks."""

    codec_id = "bzip2"
    family = "bzip2"
    filter_ids = (BZIP2_ID,)

    blocksize: int = 9

    def h5_kwargs(self) -> dict[str, Any]:
        return dict(self.plugin().BZip2(blocksize=self.blocksize))

    @classmethod
    def settings_from_cd_values(cls, values: tuple[int, ...]) -> dict[str, Any]:
        """cd_values: (blocksize,)."""
        return {"blocksize": values[0]}

    def encode(self, chunk: np.ndarray) -> bytes:
        return bz2.compress(raw_bytes(chunk), self.blocksize)

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return as_chunk(bz2.decompress(data), shape, dtype, self.name)
