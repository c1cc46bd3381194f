"""Merlin's raw (``R64``) frame format: the counters as the Medipix3 chips read them out, not yet assembled.

Layout (as LiberTEM's ``.mib`` reader and LiberTEM-rs ``libertem_qd_mpx`` decode it, and Merlin writes it):

* the data is a sequence of big-endian 64-bit words; each word, read little-endian (its bytes reversed), holds
  consecutive pixels from its least significant end: 64 bits of 1-bit counters (``depth 1``), 8 bytes
  (``depth 6``), 4 16-bit words (``depth 12``);
* ``depth 24``: two 12-bit frames one after the other, the first holding the high 12 bits of each counter;
* single chip (``1x1``): the rows of the 256x256 chip in order;
* quad (``2x2``, header width 1024, height 256): each raw row holds one row of each chip, ``[Q4 | Q3 | Q2 | Q1]``;
  raw row ``r`` of Q1 and Q2 is image row ``r`` (left and right half), of Q3 and Q4 image row ``511 - r``
  (left and right half), those two reversed along x (the bottom chips are mounted rotated by 180 degrees).

Decoded frames are in the stored orientation of Merlin's binary frames (``U08/U16/U32`` as written, before any
det_y flip): ``data.mib`` applies the same orientation to both formats. Everything is vectorised numpy: a
byteswap of the 64-bit words, views, ``np.unpackbits`` / ``np.packbits``, and one fancy index for the quad.
"""

from __future__ import annotations

import numpy as np

from stempress.errors import StempressError

CHIP = 256  # Medipix3 pixels per chip side
DEPTHS = (1, 6, 12, 24)
#: bits each counter takes in a raw word (24: two 12-bit frames of 16-bit words)
_STORED_BITS = {1: 1, 6: 8, 12: 16, 24: 32}
_DTYPES = {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}
LAYOUTS = {"1x1": (1, (CHIP, CHIP)), "2x2": (4, (2 * CHIP, 2 * CHIP))}


def geometry(layout: str, chips: int, depth: int | None, size: tuple[int, int] | None = None,
             where: str = "raw frame") -> tuple[int, int]:
    """The assembled ``(det_y, det_x)`` of a raw frame whose header gives ``size`` (width, height), refusing what
    this decoder does not handle (other layouts, gaps, a row ROI)."""
    if depth not in DEPTHS:
        raise StempressError(f"{where}: raw (R64) frame with counter depth {depth!r}; expected 1, 6, 12 or 24 in "
                             "the header's MQ1A fields (record with a Merlin version that writes them)")
    if layout.strip() not in LAYOUTS or LAYOUTS[layout.strip()][0] != chips:
        raise StempressError(f"{where}: raw (R64) frames of {chips} chip(s) in layout {layout.strip()!r} are not "
                             "supported (single chip 1x1 and quad 2x2 are); record with Merlin's binary format")
    shape = LAYOUTS[layout.strip()][1]
    # 24 bit: LiberTEM's reader expects twice the width (the two 12-bit frames); the chips' own width is taken too
    if size is not None and size not in (header_size(shape, depth), header_size(shape, 12)):
        raise StempressError(f"{where}: raw (R64) frame of {size[0]}x{size[1]} readout pixels, expected "
                             f"{'x'.join(map(str, header_size(shape, depth)))} for {chips} whole chip(s) (a row ROI?); "
                             "record with Merlin's binary format")
    return shape


def dtype(depth: int) -> np.dtype:
    """The native dtype a raw frame of ``depth`` decodes to (the counter's smallest unsigned type)."""
    return np.dtype(_DTYPES[depth])


def data_bytes(shape: tuple[int, int], depth: int) -> int:
    """Bytes of one raw frame's data."""
    return shape[0] * shape[1] * _STORED_BITS[depth] // 8


def header_size(shape: tuple[int, int], depth: int) -> tuple[int, int]:
    """The width and height an ``MQ1`` header gives a raw frame: the raw rows' length (all chips side by side,
    twice that for 24 bit's two frames) and the chip height."""
    chips = shape[0] * shape[1] // (CHIP * CHIP)
    return CHIP * chips * (2 if depth == 24 else 1), CHIP


def decode(data: np.ndarray, shape: tuple[int, int], depth: int) -> np.ndarray:
    """``(n, data_bytes)`` uint8 raw frames as ``(n, *shape)`` native counters, stored orientation."""
    n = data.shape[0]
    if depth == 24:
        half = data.shape[1] // 2
        high = _pixels(data[:, :half], 12).astype(np.uint32)
        return _assemble((high << 12) | _pixels(data[:, half:], 12), n, shape)
    return _assemble(_pixels(data, depth), n, shape)


def encode(frames: np.ndarray, depth: int) -> np.ndarray:
    """``(n, H, W)`` counters (stored orientation) as ``(n, data_bytes)`` uint8 raw frames; values the raw words
    cannot hold (1 bit: above 1; 6: above 255; 12: above 65535; 24: above 2**24 - 1) are refused."""
    top = int(frames.max(initial=0))
    limit = (1 << (_STORED_BITS[depth] if depth != 24 else 24)) - 1
    if top > limit or (frames.dtype.kind == "i" and int(frames.min(initial=0)) < 0):
        raise StempressError(f"a count of {top} does not fit Merlin's {depth}-bit raw format (at most {limit}); "
                             "send a deeper counter depth or the binary format")
    n = frames.shape[0]
    px = _disassemble(frames, n)
    if depth == 24:
        px = px.astype(np.uint32)
        return np.concatenate([_words(px >> 12, 12, n), _words(px & 0xFFF, 12, n)], axis=1)
    return _words(px, depth, n)


def _pixels(data: np.ndarray, depth: int) -> np.ndarray:
    """Raw bytes -> counters in readout order: each big-endian 64-bit word byteswapped, then read as bits,
    bytes or little-endian 16-bit words."""
    n = data.shape[0]
    little = np.ascontiguousarray(data).view(">u8").astype("<u8").view(np.uint8).reshape(n, -1)
    if depth == 1:
        return np.unpackbits(little, axis=1, bitorder="little")
    if depth == 6:
        return little
    return little.view("<u2").astype(np.uint16)


def _words(px: np.ndarray, depth: int, n: int) -> np.ndarray:
    """Counters in readout order -> raw bytes (the inverse of ``_pixels``)."""
    if depth == 1:
        little = np.packbits(px.astype(np.uint8), axis=1, bitorder="little")
    elif depth == 6:
        little = np.ascontiguousarray(px, np.uint8)
    else:
        little = np.ascontiguousarray(px, "<u2").view(np.uint8)
    return little.reshape(n, -1).view("<u8").astype(">u8").view(np.uint8).reshape(n, -1)


def _assemble(px: np.ndarray, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Readout order -> image: quad raw rows ``[Q4|Q3|Q2|Q1]`` placed as ``[[Q1, Q2], [Q3, Q4] rotated]``."""
    if shape == (CHIP, CHIP):
        return px.reshape(n, CHIP, CHIP)
    rows = px.reshape(n, CHIP, 4, CHIP)
    top = rows[:, :, [3, 2], :].reshape(n, CHIP, 2 * CHIP)
    bottom = rows[:, ::-1, [1, 0], ::-1].reshape(n, CHIP, 2 * CHIP)
    return np.concatenate([top, bottom], axis=1)


def _disassemble(frames: np.ndarray, n: int) -> np.ndarray:
    """Image -> readout order (the inverse of ``_assemble``)."""
    if frames.shape[1:] == (CHIP, CHIP):
        return frames.reshape(n, -1)
    if frames.shape[1:] != (2 * CHIP, 2 * CHIP):
        raise StempressError(f"Merlin raw frames are 256x256 (single chip) or 512x512 (quad), got "
                             f"{frames.shape[1:]}; send this source in the binary format")
    rows = np.empty((n, CHIP, 4, CHIP), frames.dtype)
    rows[:, :, 3], rows[:, :, 2] = frames[:, :CHIP, :CHIP], frames[:, :CHIP, CHIP:]
    bottom = frames[:, : CHIP - 1 : -1]  # image rows 511 .. 256: raw rows 0 .. 255
    rows[:, :, 1], rows[:, :, 0] = bottom[:, :, CHIP - 1 :: -1], bottom[:, :, : CHIP - 1 : -1]
    return rows.reshape(n, -1)
