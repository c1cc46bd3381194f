"""The reducer set as a sink: every reducer over the blocks it sees, linear ones fused into one projection
(``reduce.engine``), partial results over row ranges merged in row order."""

from __future__ import annotations

from collections.abc import Sequence

from stempress.data.base import Block
from stempress.reduce.calibration import Calibration
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

    def open(self, info: RunInfo) -> None:
        if self.calibration is None:
            self.calibration = Calibration.from_metadata(info.metadata, info.shape[2:])
        self._pass = RowPass(self.reducers, info.shape, info.dtype, self.calibration, info.row_range)

    def consume(self, block: Block) -> None:
        assert self._pass is not None, "open the sink first"
        self._pass.process(block)

    def partial(self, rows: tuple[int, int]) -> ReducerSink:
        return ReducerSink(self.reducers, self.calibration, name=self.name)

    def merge(self, other: ReducerSink) -> None:
        """Absorb the partition over the next rows (partitions arrive in row order)."""
        if self._merged is None:
            self._merged = other._pass
        else:
            self._merged.merge(other._pass)  # type: ignore[arg-type]

    def finish(self) -> Results:
        done = self._merged if self._merged is not None else self._pass
        assert done is not None, "open the sink first"
        return done.finish()
