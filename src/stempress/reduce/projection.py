"""The exact projection kernel every linear reducer runs on: ``frames @ weights`` for blocks of whole scan rows.

Its own module because both the reducers' standalone path (``protocol.LinearReducer.process``) and the fused
pass (``engine.RowPass``, every linear reducer's weights stacked into one matrix) run it, and must give the same
bits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: float32 holds every integer below this exactly; the fast path stays below it.
_EXACT_F32 = 2**24
#: weights up to this magnitude stay one column; larger integer weights (CoM coordinates) are split in two
_DIGIT_MAX = 16
#: frames per conversion chunk: the float copy of a chunk stays near cache size
_CHUNK_BYTES = 4 * 1024**2
#: at most this many frames per chunk, so a float32 chunk sum of uint16 counts stays exact (65535 * 256 < 2**24)
_CHUNK_FRAMES = 256
#: float32 product columns come in groups of this many: OpenBLAS's sgemm for a few frames by a few columns costs
#: per group of 8 columns (measured on AVX2: 2, 4 or 8 columns cost the same, 6 more than 8, 12 as much as 16)
_COLUMN_GROUP = 8
#: byte counts up to this are summed over every pixel in their own bytes (at least 16 frames or pixels per byte sum)
_BYTE_TOP = 15
#: per pixel, converting a frame's window and summing a float32 frame cost about these fractions of the 8-column sgemm
#: (measured in place: ~0.16, ~0.09 and ~0.38 ns per pixel per frame): they choose between copying the window out
#: and multiplying the whole detector rows around it in the frames' float32 copy
_COPY_COST, _SUM_COST = 0.4, 0.25
#: the float32 product keeps to a window of the detector only when it leaves out at least this fraction of it
_WINDOW_SAVES = 0.25


class Projection:
    """``frames (n, pixels) @ weights (pixels, k)`` for blocks of whole scan rows, plus the sum of frames.

    Why it is exact and blocking-independent: unsigned 8/16-bit counts with integer weights run in float32,
    where every partial sum is an integer below 2**24 (large weights such as pixel coordinates are split into
    two small digits and recombined in float64; a frame too bright for that bound is redone in float64);
    anything else runs in float64 (and so does everything after the first frame too bright for float32).
    Every result of the float32 path is an exact integer, so neither the order of its sums nor the way its work
    is split (a window of the detector, the frame total apart) changes a bit. Frames are converted in chunks
    aligned to each scan row's start, so every float64 BLAS call has the same shape whatever the block size or
    partition, and per-position results are bit-identical even for float data.
    """

    def __init__(self, weights: np.ndarray, dtype: np.dtype, shape: Sequence[int]):
        _, self.scan_x, dy, dx = (int(n) for n in shape)
        self.det = (dy, dx)
        self.pixels = dy * dx
        weights = np.asarray(weights, np.float64)
        if weights.ndim != 2 or weights.shape[0] != self.pixels:
            raise ValueError(f"weights must be ({self.pixels}, k), got {weights.shape}")
        self.k = weights.shape[1]
        self.weights64 = np.ascontiguousarray(weights)
        dtype = np.dtype(dtype)
        integer_weights = bool(np.all(np.isfinite(weights))) and bool(np.array_equal(weights, np.round(weights)))
        small = self.k == 0 or float(np.abs(weights).max()) < _EXACT_F32
        self.exact32 = dtype.kind == "u" and dtype.itemsize <= 2 and integer_weights and small
        self.work = np.dtype(np.float32 if self.exact32 else np.float64)
        self.chunk = int(max(1, min(_CHUNK_FRAMES, self.scan_x, _CHUNK_BYTES // (self.pixels * self.work.itemsize))))
        self._columns: _Columns | None = _columns(self.weights64, self.det) if self.exact32 else None
        #: frames whose float32 pattern sum stays exact (each pixel's sum below 2**24 at the dtype's largest count)
        self._run_limit = (_EXACT_F32 - 1) // int(np.iinfo(dtype).max) if self.exact32 else 0
        self._allocate()

    def _allocate(self) -> None:
        """Work buffers of this pass's own (a ``fresh`` twin gets new ones)."""
        self._buf = np.empty((self.chunk, self.pixels), self.work)
        self._ones = np.ones(self.chunk, self.work)
        self._psum = np.empty(self.pixels, self.work)
        cols = self._columns
        if cols is not None:
            self._win: np.ndarray | None = None  # the window's copy, made when first needed
            self._res = np.empty((self.chunk, cols.w32.shape[1]), np.float32)
            self._ext = np.zeros((self.chunk, cols.w32.shape[1] + 1), np.float64)  # [products, frame total]
            self._ones_pixels = np.ones(self.pixels, np.float32) if cols.background is not None else None
            self._run = np.zeros(self.pixels, np.float32)  # the pattern's float32 sum over the last frames
            self._run_frames = 0
            self._bytes = np.zeros(self.pixels, np.uint8)  # ... and its sum of byte counts, at most _bytes_top
            self._chunk_bytes = np.empty(self.pixels, np.uint8)
            self._bytes_top = 0

    def fresh(self) -> Projection:
        """The same weights with work buffers of its own, for another pass of the same run (a partial over a few
        rows, on another thread): deriving the weights' columns again costs more than reducing a scan row."""
        twin = copy.copy(self)
        twin._allocate()
        return twin

    def apply(self, data: np.ndarray, pattern_into: Sequence[np.ndarray] = ()) -> np.ndarray:
        """Products ``(rows, scan_x, k)`` in float64; the block's frame sums are added to each of
        ``pattern_into`` (float64, ``(pixels,)``): chunk by chunk in scan order (float64), or as exact integer sums."""
        n_rows = data.shape[0]
        frames = data.reshape(n_rows * self.scan_x, *self.det)
        out = np.empty((n_rows, self.scan_x, self.k), np.float64)
        flat = out.reshape(n_rows * self.scan_x, self.k)
        for row in range(n_rows):
            for c0 in range(0, self.scan_x, self.chunk):
                lo = row * self.scan_x + c0
                n = min(self.chunk, self.scan_x - c0)
                if self.exact32:
                    self._chunk32(frames[lo:lo + n], flat[lo:lo + n], pattern_into)
                else:
                    self._chunk64(frames[lo:lo + n], flat[lo:lo + n], pattern_into)
        self._flush(pattern_into)
        return out

    def _chunk64(self, frames: np.ndarray, dest: np.ndarray, pattern_into: Sequence[np.ndarray]) -> None:
        """Anything else (float data, other integer types, counts after a frame too bright for float32) in float64:
        one BLAS call of the chunk's shape."""
        n = frames.shape[0]
        buf = self._buf[:n]
        np.copyto(buf.reshape(frames.shape), frames, casting="unsafe")
        if self.k:
            np.matmul(buf, self.weights64, out=dest)
        self._pattern(buf, pattern_into)

    def _chunk32(self, frames: np.ndarray, dest: np.ndarray, pattern_into: Sequence[np.ndarray]) -> None:
        """Counts and integer weights: float32, exact (see ``_columns``); a frame too bright is redone in float64.
        Sums over every pixel (the pattern, the frame totals) of byte counts small enough to add up in their own
        bytes are taken on the bytes themselves, without the frames' float32 copy."""
        cols = self._columns
        assert cols is not None
        every = bool(pattern_into) or cols.background is not None  # sums over every pixel
        top = self._byte_top(frames) if every else None
        copied = every and top is None
        buf = self._buf[:frames.shape[0]]
        if copied:
            np.copyto(buf.reshape(frames.shape), frames, casting="unsafe")
        bright = self._products32(frames, buf, copied, top, dest) if self.k else None
        if pattern_into:
            self._pattern32(frames, buf, top, pattern_into)
        if bright is not None and bright.any():
            dest[bright] = frames[bright].reshape(-1, self.pixels).astype(np.float64) @ self.weights64
            self._use_float64()

    def _products32(self, frames: np.ndarray, buf: np.ndarray, copied: bool, top: int | None,
                    dest: np.ndarray) -> np.ndarray:
        """The chunk's products into ``dest``, ``[window products, frame total] @ recombine``; returns which frames
        were too bright for float32."""
        cols = self._columns
        assert cols is not None
        n, width = frames.shape[0], cols.w32.shape[1]
        ext = self._ext[:n]
        bright = np.zeros(n, bool)
        band = copied and width and cols.band[cols.background is not None]
        if width:
            y0, y1, x0, x1 = cols.box
            res = self._res[:n]
            if band:  # whole detector rows of the frames' copy, a view
                np.matmul(buf[:, y0 * self.det[1]:y1 * self.det[1]], cols.w32_band, out=res)
            else:
                if self._win is None:
                    self._win = np.empty((self.chunk, cols.w32.shape[0]), np.float32)
                win = self._win[:n]
                np.copyto(win.reshape(n, y1 - y0, x1 - x0), frames[:, y0:y1, x0:x1], casting="unsafe")
                np.matmul(win, cols.w32, out=res)
            # column 0 sums the window; every partial sum of the window's products is bounded by it times wmax
            bright = res[:, 0] >= cols.limit
            ext[:, :width] = res
        if cols.background is None:
            np.matmul(ext[:, :width], cols.recombine[:width], out=dest)
            return bright
        total = ext[:, width]
        if top is not None:
            total[:] = _byte_totals(frames.reshape(n, -1), top)
        else:  # a float32 sum of counts is exact while it stays below 2**24 (its partial sums only grow)
            if band:  # the band's sum (column 0) plus the rows above and below it
                total[:] = ext[:, 0]
                parts = [rows for rows in (buf[:, :y0 * self.det[1]], buf[:, y1 * self.det[1]:]) if rows.shape[1]]
            else:
                total[:] = 0
                parts = [buf]
            for rows in parts:
                part = rows @ self._ones_pixels[:rows.shape[1]]
                bright |= part >= _EXACT_F32
                total += part
        np.matmul(ext, cols.recombine, out=dest)
        return bright

    def _pattern32(self, frames: np.ndarray, buf: np.ndarray, top: int | None,
                   pattern_into: Sequence[np.ndarray]) -> None:
        """The chunk's pattern sum, in float32 (from the frames' copy) or in bytes, flushed into ``pattern_into``
        before it could pass what either holds exactly."""
        n = frames.shape[0]
        if top is None:
            if self._run_frames + n > self._run_limit:
                self._flush(pattern_into)
            # the float32 sum of counts: exact below 2**24 (scipy's sgemv could add in place, but holds the GIL)
            np.matmul(self._ones[:n], buf, out=self._psum)
            np.add(self._run, self._psum, out=self._run)
            self._run_frames += n
        elif top:
            flat = frames.reshape(n, -1)
            step = 255 // top
            for f0 in range(0, n, step):  # each pixel's sum over these frames, and so far, stays in its byte
                part = flat[f0:f0 + step]
                if self._bytes_top + len(part) * top > 255:
                    self._flush(pattern_into)
                np.add.reduce(part, axis=0, dtype=np.uint8, out=self._chunk_bytes)
                np.add(self._bytes, self._chunk_bytes, out=self._bytes)
                self._bytes_top += len(part) * top

    def _byte_top(self, frames: np.ndarray) -> int | None:
        """The chunk's largest count when the frames are bytes this small (1-bit and other sparse 8-bit counts),
        else None."""
        if frames.dtype.itemsize != 1 or self.pixels % 8 or not frames.size:
            return None
        top = int(frames.max())
        return top if top <= _BYTE_TOP else None

    def _flush(self, pattern_into: Sequence[np.ndarray]) -> None:
        """The float32 path's pattern sums so far into the float64 sums (exact integers: any order, same bits)."""
        if self._run_limit and self._run_frames:
            for acc in pattern_into:
                acc += self._run
            self._run.fill(0)
            self._run_frames = 0
        if self._run_limit and self._bytes_top:
            for acc in pattern_into:
                acc += self._bytes
            self._bytes.fill(0)
            self._bytes_top = 0

    def _pattern(self, buf: np.ndarray, pattern_into: Sequence[np.ndarray]) -> None:
        if pattern_into:
            np.matmul(self._ones[:buf.shape[0]], buf, out=self._psum)
            for acc in pattern_into:
                acc += self._psum

    def _use_float64(self) -> None:
        """Data this bright would be redone frame by frame; float64 from here on is exact too (integer
        results are unique, so the switch changes no bit) and costs one product, not two."""
        self.exact32 = False
        self.work = np.dtype(np.float64)
        self._buf = np.empty((self.chunk, self.pixels), self.work)
        self._ones = np.ones(self.chunk, self.work)
        self._psum = np.empty(self.pixels, self.work)


def _byte_totals(frames: np.ndarray, top: int) -> np.ndarray:
    """Each frame's sum of byte counts up to ``top``, as uint64: the bytes added eight at a time as 64-bit words,
    in groups small enough that no byte's sum passes 255 (no carry), then the groups' bytes summed."""
    n, size = frames.shape
    words = np.ascontiguousarray(frames).view(np.uint64)
    lanes = size // 8
    group = 1 << min((255 // max(top, 1)).bit_length() - 1, (lanes & -lanes).bit_length() - 1)
    part = np.add.reduce(words.reshape(n, group, lanes // group), axis=1)
    return np.add.reduce(part.view(np.uint8), axis=1, dtype=np.uint64)


@dataclass(frozen=True)
class _Columns:
    """The float32 path's plan: small-integer columns over a window of the detector, recombined in float64."""

    #: (window pixels, width) float32 small-integer columns (width 0: none); column 0 is all ones (the window's sum,
    #: which bounds every partial sum of the others)
    w32: np.ndarray
    #: (width + 1, k) float64: the outputs are ``[window products, frame total (over every pixel)] @ recombine``
    recombine: np.ndarray
    #: the last row of ``recombine``, None where no output needs the frame total
    background: np.ndarray | None
    #: the window: detector rows [y0, y1) and columns [x0, x1)
    box: tuple[int, int, int, int]
    #: ``w32`` over the window's whole detector rows (the same when the window spans the detector's width) ...
    w32_band: np.ndarray
    #: ... and whether those rows, a view of the frames' float32 copy where there is one, cost less than copying
    #: the window out, [without, with] a frame total to take
    band: tuple[bool, bool]
    #: a window sum at least this (2**24 over the largest weight magnitude of ``w32``) may not be exact in float32
    limit: float


def _columns(weights: np.ndarray, det: tuple[int, int]) -> _Columns:
    """Integer weights as small-integer float32 columns over a window of the detector, ``W``, a recombination
    ``R`` and a background ``b`` with ``weights == W @ R + ones * b`` (``W`` zero outside the window).

    Why: the float32 product's cost grows with the pixels it runs over (and with groups of 8 columns), so each
    weight column is taken relative to its background (the value at the detector's corner, when that leaves fewer
    nonzero weights: an annulus reaching the corners, HAADF, is the frame total minus a disk), and the product
    runs over the box around every nonzero weight left (a BF disk, an ADF annulus, a CoM mask); the total over every
    pixel is summed apart. A column with entries above ``_DIGIT_MAX`` becomes ``B * q + r`` with ``|q|, r <= B
    ~ sqrt(max)`` (the float32 bound is the window's sum times the largest entry); columns equal up to sign are
    shared.
    """
    pixels, k = weights.shape
    dy, dx = det
    columns: list[np.ndarray] = []
    index: dict[bytes, int] = {}
    pieces: list[list[tuple[int, float]]] = []
    background = np.zeros(k)

    def add(parts: list[tuple[int, float]], values: np.ndarray, factor: float) -> None:
        """``factor * values`` as a shared column times a factor (nothing for zeros)."""
        nonzero = np.flatnonzero(values)
        if not nonzero.size:
            return
        sign = -1.0 if values[nonzero[0]] < 0 else 1.0
        values = values * sign + 0.0  # no negative zeros, so equal columns have equal bytes
        key = values.tobytes()
        if key not in index:
            index[key] = len(columns)
            columns.append(values)
        parts.append((index[key], sign * factor))

    for j in range(k):
        w = weights[:, j] + 0.0
        if pixels and np.count_nonzero(w - w[0]) < np.count_nonzero(w):
            background[j] = w[0]
            w = w - w[0] + 0.0
        top = float(np.abs(w).max()) if pixels else 0.0
        parts: list[tuple[int, float]] = []
        if top <= _DIGIT_MAX:
            add(parts, w, 1.0)
        else:
            base = float(np.ceil(np.sqrt(top + 1)))
            q = np.floor(w / base)
            add(parts, q, base)
            add(parts, w - base * q, 1.0)
        pieces.append(parts)
    box = (0, 0, 0, 0)
    if columns:
        used = np.any([values != 0 for values in columns], axis=0).reshape(dy, dx)
        rows, cols = np.flatnonzero(used.any(axis=1)), np.flatnonzero(used.any(axis=0))
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        if (box[1] - box[0]) * (box[3] - box[2]) > (1 - _WINDOW_SAVES) * pixels:
            box = (0, dy, 0, dx)
    y0, y1, x0, x1 = box
    width = -(-(len(columns) + 1) // _COLUMN_GROUP) * _COLUMN_GROUP if columns else 0

    def restricted(xa: int, xb: int) -> np.ndarray:
        w32 = np.zeros(((y1 - y0) * (xb - xa), width), np.float32)
        if width:
            w32[:, 0] = 1
        for i, values in enumerate(columns):
            w32[:, 1 + i] = values.reshape(dy, dx)[y0:y1, xa:xb].ravel()
        return w32

    w32 = restricted(x0, x1)
    w32_band = w32 if x1 - x0 == dx else restricted(0, dx)
    recombine = np.zeros((width + 1, k), np.float64)
    for j, parts in enumerate(pieces):
        for i, factor in parts:
            recombine[1 + i, j] += factor
    if w32.shape[0] == pixels:  # the window is the whole detector: column 0 is the frame total
        recombine[0] += background
    else:
        recombine[width] = background
    wmax = max(1.0, float(np.abs(w32).max())) if w32.size else 1.0
    band_px, box_px = w32_band.shape[0], w32.shape[0]
    band = tuple(band_px + with_total * _SUM_COST * (pixels - band_px) <= (1 + _COPY_COST) * box_px
                 + with_total * _SUM_COST * pixels for with_total in (False, True))
    background = recombine[width] if recombine[width].any() else None
    return _Columns(w32, recombine, background, box, w32_band, band, float(np.ceil(_EXACT_F32 / wmax)))
