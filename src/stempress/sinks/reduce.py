"""The reducer set as a sink: every reducer over the blocks it sees, linear ones fused into one projection
(``reduce.engine``), partial results over row ranges merged in row order. Positions a block marks invalid (a
live stream's missing frames) come out NaN in every per-position output, never as the fill value's result."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stempress.data.base import Block
from stempress.data.calibration import Calibration
from stempress.errors import StempressError
from stempress.reduce.engine import Results, RowPass, check_names
from stempress.reduce.protocol import Reducer
from stempress.sinks.protocol import RunInfo


class ReducerSink:
    """``finish()`` returns ``{reducer name: {output name: array}}``; ``calibration`` defaults to the source's."""

    name = "reduce"

    def __init__(self, reducers: Sequence[Reducer], calibration: Calibration | None = None, *,
                 name: str = "reduce") -> None:
        check_names(reducers)
        self.reducers, self.calibration, self.name = list(reducers), calibration, name
        self._pass: RowPass | None = None
        self._merged: RowPass | None = None
        #: False where a block said the frame is missing, over this sink's rows (None: every frame arrived)
        self.received: np.ndarray | None = None
        self._parts: list[np.ndarray] = []
        self.results: Results | None = None
        #: the pass of the sink this one is a partial of, while in its process (shares its per-run constants)
        self._like: RowPass | None = None

    def open(self, info: RunInfo) -> None:
        if self.calibration is None:
            self.calibration = Calibration.from_metadata(info.metadata, info.shape[2:])
        self.shape, self.rows = info.shape, info.row_range
        self._pass = RowPass(self.reducers, info.shape, info.dtype, self.calibration, info.row_range, like=self._like)
        self._like = None

    def consume(self, block: Block) -> None:
        assert self._pass is not None, "open the sink first"
        self._pass.process(block)
        if block.valid is not None and not block.valid.all():
            if self.received is None:
                self.received = np.ones((self.rows[1] - self.rows[0], self.shape[1]), bool)
            self.received[block.start - self.rows[0]:block.stop - self.rows[0]] = block.valid

    def partial(self, rows: tuple[int, int]) -> ReducerSink:
        part = ReducerSink(self.reducers, self.calibration, name=self.name)
        part._like = self._pass  # a stream offloads a partial per block: its masks and weights are this pass's
        return part

    def __getstate__(self) -> dict[str, object]:
        """A partial sent to another process leaves the parent's pass behind (it derives its own constants)."""
        return {**self.__dict__, "_like": None}

    def merge(self, other: ReducerSink) -> None:
        """Absorb the partition over the next rows (partitions arrive in row order)."""
        if self._merged is None:
            self._merged = other._pass
        else:
            self._merged.merge(other._pass)  # type: ignore[arg-type]
        rows = other.rows[1] - other.rows[0]
        self._parts.append(other.received if other.received is not None else np.ones((rows, other.shape[1]), bool))

    @property
    def rows_reduced(self) -> int:
        """Scan rows through the reducers so far (merged, for offloaded partials)."""
        done = self._merged if self._merged is not None else self._pass
        return 0 if done is None else int(done.seen.sum())

    def snapshot(self) -> Results:
        """The results so far, while the pass runs (a live scan's preview): per-position outputs over the whole
        scan, NaN where no row has been reduced yet; outputs of reducers without per-position outputs (the mean
        pattern) from what they hold, left out while they hold nothing. Copies: safe to hand to another thread.
        Call it on the engine's thread (as a sink does), never alongside ``merge``."""
        done = self._merged if self._merged is not None else self._pass
        assert done is not None, "open the sink first"
        lo, hi = done.rows
        out: Results = {}
        for reducer, state in zip(self.reducers, done.states, strict=True):
            specs = reducer.outputs(self.shape, done.dtype)
            images = {key: spec for key, spec in specs.items() if spec.kind == "position" and key in state.buffers}
            if images:
                out[reducer.name] = {}
                for key, spec in images.items():
                    full = np.full(spec.shape(self.shape), np.nan)
                    full[lo:hi] = state.buffers[key]
                    full[lo:hi][~done.seen] = np.nan
                    out[reducer.name][key] = full
            elif all(spec.kind != "position" for spec in specs.values()):
                try:
                    out[reducer.name] = {k: np.array(v, copy=True) for k, v in reducer.finish(state).items()}
                except StempressError:  # nothing seen yet (the mean pattern of no frame)
                    continue
        return out

    def finish(self) -> Results:
        done = self._merged if self._merged is not None else self._pass
        assert done is not None, "open the sink first"
        results = done.finish()
        self.results = results  # kept: a sink of the same pass may look at them after (a live scan's last snapshot)
        if self._parts:
            merged = np.concatenate(self._parts)
            self.received = None if merged.all() else merged
        if self.received is not None:
            results.received = self.received  # type: ignore[attr-defined]
            mark_missing(results, self.reducers, self.shape, done.dtype, self.received)
        return results


def mark_missing(results: Results, reducers: Sequence[Reducer], shape: tuple[int, int, int, int],
                 dtype: np.dtype, received: np.ndarray) -> None:
    """NaN at the positions that never arrived in every per-position output (integer outputs become float64)."""
    missing = ~received
    for reducer in reducers:
        for key, spec in reducer.outputs(shape, dtype).items():
            if spec.kind != "position":
                continue
            out = results[reducer.name][key]
            if out.dtype.kind not in "fc":
                out = out.astype(np.float64)
            out[missing] = np.nan
            results[reducer.name][key] = out
