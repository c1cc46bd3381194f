"""No filter: chunks stored as their raw bytes, the ratio-1 reference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stempress.codecs.base import Hdf5Codec
from stempress.codecs.chunk_codec import as_chunk, contiguous


@dataclass(frozen=True)
class Uncompressed(Hdf5Codec):
    """An empty filter pipeline; also the decoder of chunks HDF5 stored with every filter skipped."""

    codec_id = "none"
    family = "none"
    needs_plugin = False

    name: str = "none"

    def h5_kwargs(self) -> dict[str, Any]:
        return {}

    def encode(self, chunk: np.ndarray) -> bytes:
        return contiguous(chunk).tobytes()

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return as_chunk(data, shape, dtype, self.name)
