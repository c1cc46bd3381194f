"""codecs.bslz4: bitshuffle's C function decodes detector frames exactly as the codecs' Bitshuffle (the framing's
home) does, and a frame whose blocks would lead it past the data's end is refused before C reads it."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from stempress.codecs import bslz4
from stempress.codecs.bitshuffle import Bitshuffle


def _framed(values: np.ndarray, block: int = 0) -> bytes:
    return Bitshuffle("bslz4", nelems=block, cname="lz4").encode(values)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64"])
@pytest.mark.parametrize(("count", "block"), [(96 * 96, 0), (1021, 0), (1021, 256), (5, 0), (2000, 1024)])
def test_decode_is_the_codecs_bitshuffle_decode_bit_for_bit(dtype, count, block):
    """Whole blocks, a last short block and the last count % 8 elements copied as they are, in each element size."""
    assert bslz4._c_decompress() is not None  # the C path itself is under test, not the fallback
    values = np.random.default_rng(count).poisson(3.0, count).astype(dtype)
    blob = _framed(values, block)
    got = bslz4.decode(blob, count, np.dtype(dtype))
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, values)
    assert np.array_equal(got, Bitshuffle("bslz4", cname="lz4").decode(blob, (count,), np.dtype(dtype)))


def _lengths_damaged(blob: bytes) -> bytes:
    """The first block's length made huge: C would read far past the data."""
    return blob[:12] + struct.pack(">I", 1 << 30) + blob[16:]


@pytest.mark.parametrize("damage", [lambda b: b[:5], lambda b: b[:20], lambda b: b[:-3], _lengths_damaged,
                                    lambda b: struct.pack(">QI", 999, 8192) + b[12:],  # another size
                                    lambda b: b[:8] + struct.pack(">I", 8190) + b[12:],  # block not whole u2
                                    lambda b: b[:8] + struct.pack(">I", 8196) + b[12:],  # not a multiple of 8
                                    lambda b: b[:16] + b"\xff" * (len(b) - 16)])  # garbage blocks
def test_cut_or_damaged_frames_raise_value_error(damage):
    values = np.random.default_rng(1).poisson(3.0, 96 * 96).astype(np.uint16)
    with pytest.raises(ValueError):
        bslz4.decode(damage(_framed(values)), values.size, values.dtype)


def test_without_the_c_symbol_the_codecs_decode_is_used(monkeypatch):
    values = np.arange(1000, dtype=np.uint16)
    monkeypatch.setattr(bslz4, "_c_decompress", lambda: None)
    assert np.array_equal(bslz4.decode(_framed(values), values.size, values.dtype), values)
