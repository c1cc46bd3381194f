"""Reducers over blocks of scan rows, in one pass or over partitions that merge: the executors' common shape.

No files and no sources here: a ``RowPass`` takes ``Block`` s (``sinks.reduce.ReducerSink`` feeds it from the
engine; ``store.reducing.run_reducers`` runs that pass over a source), so a live receiver or a Dask executor
drives the same code. Linear reducers (virtual detectors, CoM, the mean
pattern) are fused into one ``Projection``: each block is converted once and multiplied once by a
``(pixels, k)`` matrix covering all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

from stempress.data.base import Block
from stempress.errors import StempressError, require_distinct_names
from stempress.reduce.calibration import Calibration
from stempress.reduce.protocol import LinearReducer, Reducer, Shape4, State

Results = dict[str, dict[str, np.ndarray]]


class NonFinite:
    """NaN and infinite values met in float frames: taken as 0, so a dead or masked pixel (NaN in a hot/dead-pixel
    masked cube) is left out of every detector, the CoM and the mean pattern instead of making every image NaN.
    Counted so the output can say how many and where."""

    def __init__(self, det_shape: tuple[int, int]) -> None:
        self.values = 0
        self.pixels = np.zeros(det_shape, bool)

    def clean(self, data: np.ndarray) -> np.ndarray:
        """``data`` with non-finite values set to 0 (a copy only when there are any)."""
        bad = ~np.isfinite(data)
        if not bad.any():
            return data
        self.values += int(bad.sum())
        self.pixels |= bad.reshape(-1, *self.pixels.shape).any(axis=0)
        return np.where(bad, np.zeros((), data.dtype), data)

    def merge(self, other: NonFinite) -> None:
        self.values += other.values
        self.pixels |= other.pixels

    def summary(self) -> dict[str, object] | None:
        """JSON-able record for provenance, or None when every value was finite."""
        if not self.values:
            return None
        where = np.argwhere(self.pixels)
        return {"values": self.values, "detector_pixels": int(where.shape[0]),
                "first_pixels_yx": where[:8].tolist(), "taken_as": 0}

    def sentence(self) -> str:
        n = int(self.pixels.sum())
        first = ", ".join(f"({y}, {x})" for y, x in np.argwhere(self.pixels)[:3])
        more = ", ..." if n > 3 else ""
        return (f"{self.values} NaN or infinite value(s) at {n} detector pixel(s) [(y, x) {first}{more}] were "
                "taken as 0: left out of every image, the CoM and the mean pattern")


class ReducerResults(dict):
    """``{reducer name: {output name: array}}``, with ``nonfinite``: what was taken as 0 (or None)."""

    nonfinite: NonFinite | None = None

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

    def __init__(self, weights: np.ndarray, dtype: np.dtype, shape: Shape4):
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
        if self.exact32:
            self._w32, self._recombine = _digit_columns(self.weights64)
            self._wmax = max(1.0, float(np.abs(self._w32).max()))
        self.chunk = int(max(1, min(_CHUNK_FRAMES, self.scan_x, _CHUNK_BYTES // (self.pixels * self.work.itemsize))))
        self._buf = np.empty((self.chunk, self.pixels), self.work)
        self._ones = np.ones(self.chunk, self.work)
        self._psum = np.empty(self.pixels, self.work)
        if self.exact32:
            self._res = np.empty((self.chunk, self._w32.shape[1]), np.float32)

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
        np.matmul(buf, self._w32, out=res)
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


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """One BLAS thread while reducing: the products are short and thin, and OpenBLAS's own threads cost
    more than they bring on them (seen as several times slower on 2 cores, not a benchmark); parallelism comes
    from partitions.
    The limit is process-wide while it lasts (OpenBLAS has one setting)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with blosc2
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class RowPass:
    """All reducers' states over one range of scan rows, the linear ones fused into one projection."""

    def __init__(self, reducers: Sequence[Reducer], shape: Shape4, dtype: np.dtype,
                 calibration: Calibration | None, rows: tuple[int, int]):
        self.reducers = list(reducers)
        self.shape, self.dtype, self.rows = shape, np.dtype(dtype), rows
        self.states: list[State] = [r.start(shape, dtype, calibration, rows) for r in self.reducers]
        self.linear: list[tuple[int, slice]] = []
        weights = []
        offset = 0
        for i, reducer in enumerate(self.reducers):
            if isinstance(reducer, LinearReducer):
                w = np.asarray(reducer.weights(self.states[i]), np.float64)
                self.linear.append((i, slice(offset, offset + w.shape[1])))
                weights.append(w)
                offset += w.shape[1]
        self.projection = Projection(np.hstack(weights), self.dtype, shape) if weights else None
        self.seen = np.zeros(rows[1] - rows[0], bool)
        self.nonfinite = NonFinite((int(shape[2]), int(shape[3]))) if self.dtype.kind in "fc" else None

    def process(self, block: Block) -> None:
        data = block.data
        if tuple(data.shape[1:]) != tuple(self.shape[1:]) or data.dtype != self.dtype:
            raise StempressError(
                f"block at row {block.start} is {data.dtype} {tuple(data.shape)}, expected {self.dtype} "
                f"(rows, {', '.join(str(n) for n in self.shape[1:])}); feed blocks of whole scan rows of one cube")
        lo, hi = block.start - self.rows[0], block.stop - self.rows[0]
        if lo < 0 or hi > self.seen.size:
            raise StempressError(f"block rows [{block.start}, {block.stop}) fall outside the scan rows "
                                 f"[{self.rows[0]}, {self.rows[1]}) being reduced; check the stream's shape")
        if self.seen[lo:hi].any():
            raise StempressError(f"scan rows [{block.start}, {block.stop}) arrived twice; send each row once")
        if not block.complete:
            block = block.without_missing()  # a stream's fill value never enters a sum (the mean pattern's)
            data = block.data
        if self.nonfinite is not None:
            block = Block(block.start, self.nonfinite.clean(data), block.valid, block.frame_ids)
            data = block.data
        if self.projection is not None:
            buffers = []
            for i, _ in self.linear:
                buffer = self.reducers[i].pattern_buffer(self.states[i])  # type: ignore[attr-defined]
                if buffer is not None:
                    buffers.append(buffer)
            products = self.projection.apply(data, buffers)
            for i, cols in self.linear:
                self.reducers[i].consume(self.states[i], block, products[..., cols])  # type: ignore[attr-defined]
        for reducer, state in zip(self.reducers, self.states, strict=True):
            if not isinstance(reducer, LinearReducer):
                reducer.process(state, block)
        self.seen[lo:hi] = True

    def merge(self, other: RowPass) -> None:
        """Absorb the pass over the next row range."""
        if other.rows[0] != self.rows[1]:
            raise ValueError(f"pass over rows {other.rows} does not follow rows {self.rows}")
        self.states = [r.merge(a, b) for r, a, b in zip(self.reducers, self.states, other.states, strict=True)]
        self.rows = (self.rows[0], other.rows[1])
        self.seen = np.concatenate([self.seen, other.seen])
        if self.nonfinite is not None and other.nonfinite is not None:
            self.nonfinite.merge(other.nonfinite)

    def finish(self) -> Results:
        missing = np.flatnonzero(~self.seen)
        if missing.size:
            raise StempressError(
                f"{missing.size} of {self.seen.size} scan rows never arrived (first: row {self.rows[0] + missing[0]}); "
                "results would be incomplete; resend the missing rows or reduce a complete source")
        results = ReducerResults()
        for reducer, state in zip(self.reducers, self.states, strict=True):
            out = reducer.finish(state)
            _check_outputs(reducer, out, self.shape, self.dtype)
            results[reducer.name] = out
        if self.nonfinite is not None and self.nonfinite.values:
            results.nonfinite = self.nonfinite
        return results


def _check_outputs(reducer: Reducer, out: dict[str, np.ndarray], shape: Shape4, dtype: np.dtype) -> None:
    """A reducer returns exactly what it declared; a mismatch is a bug in the reducer."""
    specs = reducer.outputs(shape, dtype)
    if set(out) != set(specs):
        raise ValueError(f"reducer {reducer.name!r} returned {sorted(out)}, declared {sorted(specs)}")
    for key, spec in specs.items():
        if out[key].shape != spec.shape(shape) or out[key].dtype != np.dtype(spec.dtype):
            raise ValueError(f"reducer {reducer.name!r} output {key!r} is {out[key].dtype} {out[key].shape}, "
                             f"declared {np.dtype(spec.dtype)} {spec.shape(shape)}")


def check_names(reducers: Sequence[Reducer]) -> None:
    require_distinct_names([r.name for r in reducers], "reducers", "pass at least one (e.g. "
                           "default_reducers(calibration))", "give each a distinct name=")
