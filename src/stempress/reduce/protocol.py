"""What a reducer is: declared outputs, a state per row range, process / merge / finish.

Modelled on LiberTEM's UDFs. A reducer never sees a file, only ``Block`` s of whole scan rows, so the same
reducer runs over a file, a live stream or a partition handed out by an executor. A state covers one
contiguous range of scan rows; states of adjacent ranges merge, so a cube can be cut into partitions,
reduced independently and combined. Per-position buffers hold only the state's own rows, so memory never
grows with the cube beyond the per-position outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from stempress.data.base import Block
from stempress.data.calibration import Calibration
from stempress.reduce.projection import Projection

Kind = Literal["position", "pixel", "single"]
MergeOp = Literal["rows", "sum", "max", "min"]
Shape4 = tuple[int, int, int, int]


@dataclass(frozen=True)
class OutputSpec:
    """One named array a reducer produces (or accumulates).

    ``position``: ``(scan_y, scan_x, *extra)``; ``pixel``: ``(det_y, det_x, *extra)``; ``single``: ``extra``.
    ``merge`` says how partial results of disjoint row ranges combine; position buffers always join by rows.
    """

    kind: Kind
    dtype: str = "float64"
    extra: tuple[int, ...] = ()
    units: str = ""
    merge: MergeOp = "sum"
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("position", "pixel", "single"):
            raise ValueError(f"output kind must be position, pixel or single, not {self.kind!r}")
        if self.kind == "position":
            object.__setattr__(self, "merge", "rows")
        elif self.merge == "rows":
            raise ValueError("only position outputs merge by rows")

    def shape(self, cube_shape: Shape4, n_rows: int | None = None) -> tuple[int, ...]:
        """The array's shape for a cube (position outputs: for ``n_rows`` scan rows, default all)."""
        sy, sx, dy, dx = cube_shape
        if self.kind == "position":
            return (sy if n_rows is None else n_rows, sx, *self.extra)
        if self.kind == "pixel":
            return (dy, dx, *self.extra)
        return tuple(self.extra)

    def nbytes(self, cube_shape: Shape4) -> int:
        """What keeping this output costs, for planning representations."""
        return int(np.prod(self.shape(cube_shape), dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def empty(self, cube_shape: Shape4, n_rows: int) -> np.ndarray:
        """A buffer holding the merge identity (0 for sums and rows, the dtype's extreme for max / min)."""
        dtype = np.dtype(self.dtype)
        shape = self.shape(cube_shape, n_rows)
        if self.merge in ("max", "min"):
            if dtype.kind == "f":
                fill: Any = -np.inf if self.merge == "max" else np.inf
            else:
                info = np.iinfo(dtype)
                fill = info.min if self.merge == "max" else info.max
            return np.full(shape, fill, dtype)
        return np.zeros(shape, dtype)


@dataclass
class State:
    """A reducer's partial result over scan rows ``[rows[0], rows[1])`` of a cube.

    ``buffers`` merge; ``context`` holds what ``prepare`` derived once (masks, weights) and never merges.
    """

    shape: Shape4
    dtype: np.dtype
    rows: tuple[int, int]
    buffers: dict[str, np.ndarray]
    specs: dict[str, OutputSpec]
    context: dict[str, Any] = field(default_factory=dict)

    def local(self, block: Block) -> slice:
        """Where a block's rows sit in this state's position buffers."""
        if not self.rows[0] <= block.start <= block.stop <= self.rows[1]:
            raise ValueError(f"block rows [{block.start}, {block.stop}) outside this state's rows "
                             f"[{self.rows[0]}, {self.rows[1]})")
        return slice(block.start - self.rows[0], block.stop - self.rows[0])


class Reducer(ABC):
    """Base class: declare ``outputs``, implement ``process``; the rest has working defaults.

    Override ``accumulators`` + ``finish`` when what is accumulated differs from what is returned (a mean
    accumulates a float64 sum and a count), and ``prepare`` to derive masks or weights once per state.
    """

    name: str = "reducer"

    @abstractmethod
    def outputs(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        """The arrays ``finish`` returns, by name."""

    def accumulators(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        """The arrays a state holds and merges; by default the outputs themselves."""
        return self.outputs(shape, dtype)

    def prepare(self, shape: Shape4, dtype: np.dtype, calibration: Calibration | None) -> dict[str, Any]:
        """Per-run constants (masks, weights) kept in ``state.context``."""
        return {}

    def start(self, shape: Shape4, dtype: np.dtype, calibration: Calibration | None = None,
              rows: tuple[int, int] | None = None) -> State:
        """An empty state for scan rows ``rows`` (default: all of them)."""
        shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
        dtype = np.dtype(dtype)
        lo, hi = (0, shape[0]) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= lo <= hi <= shape[0]:
            raise ValueError(f"rows [{lo}, {hi}) outside the cube's [0, {shape[0]})")
        specs = self.accumulators(shape, dtype)
        buffers = {key: spec.empty(shape, hi - lo) for key, spec in specs.items()}
        context = self.prepare(shape, dtype, calibration)
        return State(shape, dtype, (lo, hi), buffers, specs, context)

    @abstractmethod
    def process(self, state: State, block: Block) -> None:
        """Fold one block of whole scan rows into the state, in place."""

    def merge(self, a: State, b: State) -> State:
        """Combine states of adjacent row ranges (in either order) into one covering both."""
        if a.rows[1] == b.rows[0]:
            lo, hi = a, b
        elif b.rows[1] == a.rows[0]:
            lo, hi = b, a
        else:
            raise ValueError(f"cannot merge states of rows {a.rows} and {b.rows}: ranges must be adjacent")
        buffers = {}
        for key, spec in a.specs.items():
            x, y = lo.buffers[key], hi.buffers[key]
            if spec.merge == "rows":
                buffers[key] = np.concatenate([x, y], axis=0)
            elif spec.merge == "sum":
                buffers[key] = np.asarray(x + y)
            elif spec.merge == "max":
                buffers[key] = np.asarray(np.maximum(x, y))
            else:
                buffers[key] = np.asarray(np.minimum(x, y))
        return State(a.shape, a.dtype, (lo.rows[0], hi.rows[1]), buffers, a.specs, a.context)

    def finish(self, state: State) -> dict[str, np.ndarray]:
        """The outputs; by default the accumulators cast to the declared output dtypes."""
        specs = self.outputs(state.shape, state.dtype)
        return {key: state.buffers[key].astype(spec.dtype, copy=False) for key, spec in specs.items()}

    def params(self) -> dict[str, Any]:
        """JSON-able settings, recorded as provenance beside the results."""
        return {"type": type(self).__name__, "name": self.name}


class LinearReducer(Reducer):
    """A reducer whose per-position results are linear functionals of each frame (virtual detectors, CoM)
    and/or that needs the sum of frames (the mean pattern).

    The engine stacks the weights of all linear reducers into one ``(pixels, k)`` matrix, so each block is
    read and converted once and multiplied once, then hands each reducer its columns of the product.
    """

    @abstractmethod
    def weights(self, state: State) -> np.ndarray:
        """``(det_y * det_x, k)`` weights of the frame projections this reducer needs (k may be 0)."""

    def pattern_buffer(self, state: State) -> np.ndarray | None:
        """A float64 ``(det_y * det_x,)`` view the sum of every frame is added to, or None."""
        return None

    @abstractmethod
    def consume(self, state: State, block: Block, products: np.ndarray) -> None:
        """Fold ``products`` (block rows, scan_x, k) of the block's frames with ``weights`` into the state."""

    def process(self, state: State, block: Block) -> None:
        """Standalone use: project the block with this reducer's weights alone (same bits as fused)."""
        block = block.without_missing()
        projection = state.context.get("_projection")
        if projection is None:
            projection = state.context["_projection"] = Projection(self.weights(state), state.dtype, state.shape)
        buffer = self.pattern_buffer(state)
        self.consume(state, block, projection.apply(block.data, () if buffer is None else (buffer,)))
