"""Blosc1 (filter 32001): one Blosc buffer per chunk, typesize = the dtype's size, automatic block size."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numcodecs import blosc as nc_blosc

from stempress.codecs.base import Hdf5Codec
from stempress.codecs.chunk_codec import contiguous, header_check
from stempress.errors import require_choice

BLOSC_ID = 32001
#: Shuffle modes by name and the number the filter stores (the same for Blosc2's ``filters``).
SHUFFLE_MODES = {"none": 0, "byte": 1, "bit": 2}
#: Compressor codes in the filter's cd_values (hdf5plugin.Blosc; Blosc2 uses the same numbers, without snappy).
CNAME_CODES = {"blosclz": 0, "lz4": 1, "lz4hc": 2, "snappy": 3, "zlib": 4, "zstd": 5}


def name_of(code: int, codes: dict[str, int]) -> str:
    """The name a cd_values code stands for (KeyError for a code the filter does not define)."""
    return {v: k for k, v in codes.items()}[code]


@dataclass(frozen=True)
class Blosc(Hdf5Codec):
    """Blosc1 with one compressor, level and shuffle mode.

    numcodecs' Blosc is the same c-blosc the filter bundles and, off the main thread, runs a GIL-free context.
    """

    codec_id = "blosc"
    family = "blosc"
    filter_ids = (BLOSC_ID,)

    cname: str
    clevel: int
    shuffle: str = "byte"

    def __post_init__(self) -> None:
        require_choice(self.cname, tuple(CNAME_CODES), "Blosc compressor", self.name)
        require_choice(self.shuffle, tuple(SHUFFLE_MODES), "Blosc shuffle", self.name)

    def h5_kwargs(self) -> dict[str, Any]:
        flt = self.plugin().Blosc(cname=self.cname, clevel=self.clevel, shuffle=SHUFFLE_MODES[self.shuffle])
        return dict(flt)

    @classmethod
    def settings_from_cd_values(cls, values: tuple[int, ...]) -> dict[str, Any]:
        """cd_values: (filter version, blosc format, typesize, chunk bytes, clevel, shuffle, compressor)."""
        return {"clevel": values[4], "shuffle": name_of(values[5], SHUFFLE_MODES),
                "cname": name_of(values[6], CNAME_CODES)}

    def encoder_problem(self) -> str | None:
        if self.cname not in nc_blosc.list_compressors():
            return f"numcodecs' Blosc here lacks the {self.cname!r} compressor"
        return None

    def encode(self, chunk: np.ndarray) -> bytes:
        return nc_blosc.compress(contiguous(chunk), self.cname.encode(), self.clevel, SHUFFLE_MODES[self.shuffle])

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        if len(data) < 16:
            raise ValueError(f"{self.name} chunk of {len(data)} bytes is shorter than a Blosc header")
        (nbytes,) = struct.unpack_from("<I", data, 4)  # Blosc1 header: version, versionlz, flags, typesize, nbytes
        header_check(nbytes, shape, dtype, self.name)
        out = np.empty(tuple(shape), dtype=dtype)
        nc_blosc.decompress(data, out)
        return out
