"""Reducers over blocks of scan rows, in one pass or over partitions that merge: the executors' common shape.

No files and no sources here: a ``RowPass`` takes ``Block`` s (``sinks.reduce.ReducerSink`` feeds it from the
engine; ``store.reducing.run_reducers`` runs that pass over a source), so a live receiver or a Dask executor
drives the same code. Linear reducers (virtual detectors, CoM, the mean pattern) are fused into one
``Projection`` (``reduce.projection``): each block is converted once and multiplied once by a ``(pixels, k)``
matrix covering all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

from stempress.data.base import Block
from stempress.data.calibration import Calibration
from stempress.errors import StempressError, require_distinct_names
from stempress.reduce.projection import Projection
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
                 calibration: Calibration | None, rows: tuple[int, int], *, like: RowPass | None = None):
        """``like``: a pass of the same run in this process whose per-run constants (masks, weights, the fused
        projection's columns) this one shares instead of deriving them again (a partial per block of a stream)."""
        self.reducers = list(reducers)
        self.shape, self.dtype, self.rows, self.calibration = shape, np.dtype(dtype), rows, calibration
        self.linear: list[tuple[int, slice]] = []
        self._projection: Projection | None = None
        self.seen = np.zeros(rows[1] - rows[0], bool)
        self.nonfinite = NonFinite((int(shape[2]), int(shape[3]))) if self.dtype.kind in "fc" else None
        if like is not None and like.linear is not None and _same_run(self, like):
            self.states = [_restart(r, s, rows) if type(r).start is Reducer.start else r.start(shape, dtype,
                           calibration, rows) for r, s in zip(self.reducers, like.states, strict=True)]
            self.linear = like.linear
            self._projection = like.projection.fresh() if like.projection is not None else None
        else:
            self.states = [r.start(shape, dtype, calibration, rows) for r in self.reducers]
            self._fuse()

    def _fuse(self) -> None:
        weights = []
        offset = 0
        self.linear = []
        for i, reducer in enumerate(self.reducers):
            if isinstance(reducer, LinearReducer):
                w = np.asarray(reducer.weights(self.states[i]), np.float64)
                self.linear.append((i, slice(offset, offset + w.shape[1])))
                weights.append(w)
                offset += w.shape[1]
        self._projection = Projection(np.hstack(weights), self.dtype, self.shape) if weights else None

    @property
    def projection(self) -> Projection | None:
        return self._projection

    def __getstate__(self) -> dict[str, object]:
        """Only what merges travels: a worker's pass comes back without the per-run constants (masks, weights,
        the projection and its work buffers: ~10 MB at 256 x 256 pixels, against ~0.5 MB of results), which
        are derived again where they are needed."""
        state = dict(self.__dict__)
        state["_projection"] = None
        state["linear"] = None
        state["states"] = [State(s.shape, s.dtype, s.rows, s.buffers, s.specs, {}) for s in self.states]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)

    def _prepared(self) -> None:
        """Per-run constants back after unpickling (``prepare`` is deterministic, so the same bits)."""
        if self.linear is not None:
            return
        for reducer, state in zip(self.reducers, self.states, strict=True):
            state.context = reducer.prepare(self.shape, self.dtype, self.calibration)
        self._fuse()

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
        self._prepared()
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
        self._prepared()
        results = ReducerResults()
        for reducer, state in zip(self.reducers, self.states, strict=True):
            out = reducer.finish(state)
            _check_outputs(reducer, out, self.shape, self.dtype)
            results[reducer.name] = out
        if self.nonfinite is not None and self.nonfinite.values:
            results.nonfinite = self.nonfinite
        return results


def _same_run(a: RowPass, b: RowPass) -> bool:
    return (len(a.reducers) == len(b.reducers) and all(x is y for x, y in zip(a.reducers, b.reducers, strict=True))
            and tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype and a.calibration == b.calibration)


def _restart(reducer: Reducer, like: State, rows: tuple[int, int]) -> State:
    """``reducer.start`` over ``rows`` with ``like``'s constants (``context``), for a reducer whose ``start`` is the
    protocol's (empty accumulators, then ``prepare``): the same state, without preparing it again."""
    lo, hi = rows
    buffers = {key: spec.empty(like.shape, hi - lo) for key, spec in like.specs.items()}
    return State(like.shape, like.dtype, (lo, hi), buffers, like.specs, like.context)


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
