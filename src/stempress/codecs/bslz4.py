"""Bitshuffle-LZ4 detector frames (DECTRIS stream v1 ``bs*-lz4<``, Stream V2 ``bslz4``) decoded by the bitshuffle
library's own C function, ``bshuf_decompress_lz4``, straight into a new array.

Why not ``codecs.bitshuffle.Bitshuffle.decode`` (the framing's encoder and general decoder, and the fallback here):
on a 96x96 uint16 frame it costs ~30 us of CPU, two thirds of it Python and Cython around the C call, and a live
stream decodes every frame on one thread. The framing is the same (a 12-byte header: big-endian total bytes and
block bytes, then per block a big-endian length and LZ4 of the bit-shuffled block, the last ``count % 8`` elements
copied as they are). The C function takes each block's length from the data and is not told the input's length, so
the blocks are walked here first: a frame whose blocks run past its end (cut, or a damaged length) is refused before
C reads it, as is a header that announces another size than the frame's."""

from __future__ import annotations

import ctypes
import struct
from functools import cache
from typing import Any

import numpy as np

from stempress.codecs.bitshuffle import Bitshuffle, bitshuffle_block_size, one_openmp_thread

_HEADER = struct.Struct(">QI")
_LENGTH = struct.Struct(">I")
_BLOCKED_MULT = 8  # bitshuffle works on multiples of 8 elements (BSHUF_BLOCKED_MULT)


@cache
def _c_decompress() -> Any:
    """``bshuf_decompress_lz4(in, out, count, elem_size, block)`` of the loaded bitshuffle extension (its bytes
    consumed, or a negative error), or None where the build does not export it."""
    try:
        import bitshuffle.ext

        fn = ctypes.CDLL(bitshuffle.ext.__file__).bshuf_decompress_lz4
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
    return fn


@cache
def _fallback() -> Bitshuffle:
    return Bitshuffle("bslz4", cname="lz4")


def decode(blob: bytes, count: int, dtype: np.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """``count`` elements of ``dtype`` (its size the bit-shuffled element size) from HDF5-framed bitshuffle-LZ4
    ``blob``, as a new flat array or into ``out`` (C-contiguous, ``count`` elements of ``dtype``, returned flat;
    its content undefined after an error); anything malformed raises ValueError."""
    dtype = np.dtype(dtype)
    if out is None:
        out = np.empty(count, dtype)
    elif out.dtype != dtype or out.size != count or not out.flags.c_contiguous:
        raise ValueError(f"an output of {out.size} {out.dtype} is not {count} contiguous {dtype}")
    decode_into(blob, count, dtype, out.ctypes.data)
    return out.reshape(-1)


def decode_into(blob: bytes, count: int, dtype: np.dtype, address: int) -> None:
    """``decode`` into the ``count * dtype.itemsize`` bytes at ``address`` (the caller's buffer, which it keeps
    alive; a frame slot's address is known without asking numpy for it each time)."""
    if len(blob) < _HEADER.size:
        raise ValueError(f"{len(blob)} bytes, shorter than the 12-byte bitshuffle header")
    total, block_bytes = _HEADER.unpack_from(blob)
    itemsize = dtype.itemsize
    if total != count * itemsize:
        raise ValueError(f"bitshuffle header says {total} bytes, expected {count * itemsize}")
    if block_bytes % itemsize:
        raise ValueError(f"bitshuffle block of {block_bytes} bytes is not whole {itemsize}-byte elements")
    fn = _c_decompress()
    if fn is None:
        values = _fallback().decode(bytes(blob), (count,), dtype)
        ctypes.memmove(address, values.ctypes.data, values.nbytes)
        return
    block = block_bytes // itemsize or bitshuffle_block_size(itemsize)
    if block % _BLOCKED_MULT:
        raise ValueError(f"bitshuffle block of {block} elements is not a multiple of {_BLOCKED_MULT}")
    body = bytes(blob[_HEADER.size:])
    _check_blocks(body, count, itemsize, block)
    one_openmp_thread()
    used = fn(body, address, count, itemsize, block)
    if used < 0:
        raise ValueError(f"bitshuffle-LZ4 error {used} (a damaged block)")


def _check_blocks(body: bytes, count: int, itemsize: int, block: int) -> None:
    """Every block's length within ``body``, and room for the elements copied as they are after them."""
    whole, rest = divmod(count, block)
    blocks = whole + (1 if rest - rest % _BLOCKED_MULT else 0)
    end = len(body) - (count % _BLOCKED_MULT) * itemsize
    at = 0
    for _ in range(blocks):
        if at + _LENGTH.size > end:
            raise ValueError(f"bitshuffle-LZ4 data of {len(body)} bytes ends inside its blocks (cut short)")
        at += _LENGTH.size + _LENGTH.unpack_from(body, at)[0]
    if at > end:
        raise ValueError(f"bitshuffle-LZ4 blocks run {at - end} bytes past the data's end (cut short or damaged)")
