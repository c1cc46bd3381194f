"""Bitshuffle (filter 32008) with LZ4 or Zstd: BE uint64 chunk bytes, BE uint32 block bytes, then per block a
BE uint32 length + LZ4/Zstd of the bit-shuffled block; the last <8 elements are copied (bshuf_blocked_wrap_fun)."""

from __future__ import annotations

import ctypes
import glob
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from stempress.codecs.base import Hdf5Codec
from stempress.codecs.blosc import name_of
from stempress.codecs.chunk_codec import contiguous, header_check
from stempress.errors import require_choice

try:  # optional: the bitshuffle transform + LZ4/Zstd exactly as the 32008 filter applies them
    import bitshuffle
except ImportError:
    bitshuffle = None

BITSHUFFLE_ID = 32008
#: Requirement that enables direct chunks for the Bitshuffle filter (32008).
BITSHUFFLE_REQUIREMENT = "bitshuffle>=0.5.2"
#: Compression codes in the filter's cd_values (hdf5plugin.Bitshuffle).
CNAME_CODES = {"none": 0, "lz4": 2, "zstd": 3}
_DEFAULT_ZSTD_LEVEL = 3  # hdf5plugin.Bitshuffle's default

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


def one_openmp_thread() -> None:
    """Run bitshuffle's OpenMP loop on this thread only: the caller's pool is the parallelism, and nested OpenMP
    teams oversubscribe the cores (seen as several times slower per call on 2 cores, not a benchmark); a small
    chunk (a detector frame) gains nothing from a team, whose start-up alone costs more than the frame. The
    setting is per thread and touches only the runtime bitshuffle's wheel bundles, so any other OpenMP user keeps
    its threads; every caller of ``bitshuffle`` calls this first (codecs here, the live DECTRIS frames)."""
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
class Bitshuffle(Hdf5Codec):
    """Bitshuffle in blocks of ``nelems`` elements (0: the library default), then ``cname`` per block;
    ``clevel`` applies to zstd only (None: not set, as hdf5plugin leaves it for lz4)."""

    codec_id = "bitshuffle"
    family = "bitshuffle"
    filter_ids = (BITSHUFFLE_ID,)

    nelems: int = 0
    cname: str = "lz4"
    clevel: int | None = None

    def __post_init__(self) -> None:
        require_choice(self.cname, tuple(CNAME_CODES), "Bitshuffle compressor", self.name)

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.settings().items() if v is not None}

    def h5_kwargs(self) -> dict[str, Any]:
        return dict(self.plugin().Bitshuffle(**self.params))

    @classmethod
    def settings_from_cd_values(cls, values: tuple[int, ...]) -> dict[str, Any]:
        """cd_values: (major, minor, element size, nelems, compression, clevel for zstd)."""
        cname = name_of(values[4], CNAME_CODES) if len(values) > 4 else "none"
        clevel = (values[5] if len(values) > 5 else _DEFAULT_ZSTD_LEVEL) if cname == "zstd" else None
        return {"nelems": values[3] if len(values) > 3 else 0, "cname": cname, "clevel": clevel}

    def encoder_problem(self) -> str | None:
        if bitshuffle is None:
            return f"the bitshuffle package is not installed (pip install '{BITSHUFFLE_REQUIREMENT}')"
        if self.cname not in ("lz4", "zstd"):
            return f"bitshuffle without lz4/zstd compression ({self.cname!r}) is not covered"
        if self.cname == "zstd" and not getattr(bitshuffle, "__zstd__", False):
            return "this bitshuffle build has no zstd support"
        return None

    def encode(self, chunk: np.ndarray) -> bytes:
        one_openmp_thread()
        flat = contiguous(chunk).reshape(-1)
        block = self.nelems or bitshuffle_block_size(flat.dtype.itemsize)
        if self.cname == "lz4":
            body = bitshuffle.compress_lz4(flat, block)
        else:
            level = _DEFAULT_ZSTD_LEVEL if self.clevel is None else self.clevel
            body = bitshuffle.compress_zstd(flat, block, level)
        # one copy of the compressed body into the result (``+ body.tobytes()`` made two)
        return b"".join((struct.pack(">QI", flat.nbytes, block * flat.dtype.itemsize), body))

    def decode(self, data: bytes, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        one_openmp_thread()
        dtype = np.dtype(dtype)
        total, block_bytes = struct.unpack_from(">QI", data, 0)
        header_check(total, shape, dtype, self.name)
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
