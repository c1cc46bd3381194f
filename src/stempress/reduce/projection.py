"""The exact projection kernel every linear reducer runs on: ``frames @ weights`` for blocks of whole scan rows.

Its own module because both the reducers' standalone path (``protocol.LinearReducer.process``) and the fused
pass (``engine.RowPass``, every linear reducer's weights stacked into one matrix) run it, and must give the same
bits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

#: float32 holds every integer below this exactly; the fast path stays below it.
_EXACT_F32 = 2**24
#: weights up to this magnitude stay one column; larger integer weights (CoM coordinates) are split in two
_DIGIT_MAX = 16
#: frames per conversion chunk: the float copy of a chunk stays near cache size
_CHUNK_BYTES = 4 * 1024**2
#: at most this many frames per chunk, so a float32 chunk sum of uint16 counts stays exact (65535 * 256 < 2**24)
_CHUNK_FRAMES = 256


class Projection:
    """``frames (n, pixels) @ weights (pixels, k)`` for blocks of whole scan rows, plus the sum of frames.

    Why it is exact and blocking-independent: unsigned 8/16-bit counts with integer weights run in float32,
    where every partial sum is an integer below 2**24 (large weights such as pixel coordinates are split into
    two small digits and recombined in float64; a frame too bright for that bound is redone in float64);
    anything else runs in float64 (and so does everything after the first frame too bright for float32).
    Frames are converted in chunks aligned to each scan row's start, so every BLAS call has the same shape
    whatever the block size or partition, and per-position results are bit-identical even for float data.
    """

    def __init__(self, weights: np.ndarray, dtype: np.dtype, shape: Sequence[int]):
        _, self.scan_x, dy, dx = (int(n) for n in shape)
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
        #: the pixels [lo, hi) outside which every product's weights are zero (a disk's detector rows): the float32
        #: product runs over them only (None: over every pixel)
        self._band: tuple[int, int] | None = None
        if self.exact32:
            self._w32, self._recombine = _digit_columns(self.weights64)
            self._wmax = max(1.0, float(np.abs(self._w32).max()))
            self._band = _band(self._w32, self._recombine)
        self.chunk = int(max(1, min(_CHUNK_FRAMES, self.scan_x, _CHUNK_BYTES // (self.pixels * self.work.itemsize))))
        self._buf = np.empty((self.chunk, self.pixels), self.work)
        self._ones = np.ones(self.chunk, self.work)
        self._psum = np.empty(self.pixels, self.work)
        if self.exact32:
            self._res = np.empty((self.chunk, self._w32.shape[1]), np.float32)

    def fresh(self) -> Projection:
        """The same weights with work buffers of its own, for another pass of the same run (a partial over a few
        rows, on another thread): deriving the weights' columns again costs more than reducing a scan row."""
        twin = copy.copy(self)
        twin._buf, twin._psum = np.empty_like(self._buf), np.empty_like(self._psum)
        if hasattr(self, "_res"):
            twin._res = np.empty_like(self._res)
        return twin

    def apply(self, data: np.ndarray, pattern_into: Sequence[np.ndarray] = ()) -> np.ndarray:
        """Products ``(rows, scan_x, k)`` in float64; the block's frame sums are added to each of
        ``pattern_into`` (float64, ``(pixels,)``) chunk by chunk, in scan order."""
        n_rows = data.shape[0]
        frames = data.reshape(n_rows * self.scan_x, self.pixels)
        out = np.empty((n_rows, self.scan_x, self.k), np.float64)
        flat = out.reshape(n_rows * self.scan_x, self.k)
        for row in range(n_rows):
            for c0 in range(0, self.scan_x, self.chunk):
                lo = row * self.scan_x + c0
                n = min(self.chunk, self.scan_x - c0)
                buf = self._buf[:n]
                np.copyto(buf, frames[lo:lo + n], casting="unsafe")
                if self.k:
                    self._multiply(buf, flat[lo:lo + n])
                if pattern_into:
                    np.matmul(self._ones[:n], buf, out=self._psum)
                    for acc in pattern_into:
                        acc += self._psum
        return out

    def _multiply(self, buf: np.ndarray, dest: np.ndarray) -> None:
        if not self.exact32:
            np.matmul(buf, self.weights64, out=dest)
            return
        res = self._res[:buf.shape[0]]
        if self._band is None:
            np.matmul(buf, self._w32, out=res)
        else:  # column 0 sums the band only: still a bound on every partial sum of the band's products
            lo, hi = self._band
            np.matmul(buf[:, lo:hi], self._w32[lo:hi], out=res)
        np.matmul(res.astype(np.float64), self._recombine, out=dest)
        # column 0 is the frame sum; every partial sum is bounded by it times the largest weight
        bright = res[:, 0].astype(np.float64) * self._wmax >= _EXACT_F32
        if bright.any():
            dest[bright] = buf[bright].astype(np.float64) @ self.weights64
            self._use_float64()

    def _use_float64(self) -> None:
        """Data this bright would be redone frame by frame; float64 from here on is exact too (integer
        results are unique, so the switch changes no bit) and costs one product, not two."""
        self.exact32 = False
        self.work = np.dtype(np.float64)
        self._buf = np.empty((self.chunk, self.pixels), self.work)
        self._ones = np.ones(self.chunk, self.work)
        self._psum = np.empty(self.pixels, self.work)


#: the float32 product keeps to a band of pixels only when the band leaves out at least this fraction of them
_BAND_SAVES = 0.25


def _band(w32: np.ndarray, recombine: np.ndarray) -> tuple[int, int] | None:
    """The pixel range ``[lo, hi)`` holding every nonzero weight of the columns after the frame sum (column 0), when
    it is small enough to pay off and no output uses column 0 itself (an all-ones weight, which needs every pixel).

    Why the bits stay the same: with unsigned counts and integer weights every result is an exact integer, and the
    pixels outside the band add exact zeros; the brightness bound (column 0 times the largest weight) then bounds
    the band's partial sums by the band's own sum, so a frame it passes is exact in float32, and one it does not is
    redone in float64 (exact too)."""
    if w32.shape[1] < 2 or recombine[0].any():
        return None
    used = np.flatnonzero((w32[:, 1:] != 0).any(axis=1))
    if used.size == 0:
        return None
    lo, hi = int(used[0]), int(used[-1]) + 1
    return (lo, hi) if hi - lo <= (1 - _BAND_SAVES) * w32.shape[0] else None


def _digit_columns(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer weights as small-integer float32 columns W and a recombination R with ``weights == W @ R``.

    Column 0 of W is all ones (the frame sum, needed for the exactness bound); a column with entries above
    ``_DIGIT_MAX`` becomes ``B * q + r`` with ``|q|, r <= B ~ sqrt(max)``; duplicates are shared; W is padded
    to a multiple of 4 columns, which BLAS's float32 kernels prefer.
    """
    pixels, k = weights.shape
    columns: list[np.ndarray] = [np.ones(pixels)]
    index: dict[bytes, int] = {columns[0].tobytes(): 0}
    pieces: list[list[tuple[int, float]]] = []

    def column(values: np.ndarray) -> int:
        key = values.tobytes()
        if key not in index:
            index[key] = len(columns)
            columns.append(values)
        return index[key]

    for j in range(k):
        w = weights[:, j] + 0.0  # no negative zeros, so equal columns have equal bytes
        top = float(np.abs(w).max()) if pixels else 0.0
        if top <= _DIGIT_MAX:
            pieces.append([(column(w), 1.0)])
        else:
            base = float(np.ceil(np.sqrt(top + 1)))
            q = np.floor(w / base)
            pieces.append([(column(q + 0.0), base), (column(w - base * q), 1.0)])
    width = -(-len(columns) // 4) * 4
    w32 = np.zeros((pixels, width), np.float32)
    for i, values in enumerate(columns):
        w32[:, i] = values
    recombine = np.zeros((width, k), np.float64)
    for j, parts in enumerate(pieces):
        for i, factor in parts:
            recombine[i, j] += factor
    return w32, recombine
