"""Reducers run over a source: the engine passes behind ``run_reducers``, the targets' ``compute`` and
``calibrate(source)`` (and the calibrations that fall back to it).

Why here, above the engine: ``reduce/`` holds the reducers and the calibration measured on a mean pattern, pure
algorithms on blocks and arrays; running them over a source is an engine pass, a command's job. Users script
``run_reducers(source, default_reducers(calibrate(source)))`` from here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from stempress.data.base import ArraySource, Block, Dataset4D
from stempress.data.stream import BlockStream
from stempress.engine import run
from stempress.errors import StempressError
from stempress.exec.base import Executor
from stempress.progress import Progress
from stempress.reduce.calibration import Calibration, estimate_calibration
from stempress.reduce.engine import ReducerResults, Results, check_names, single_blas_thread
from stempress.reduce.imaging import MeanPattern
from stempress.reduce.protocol import Reducer, Shape4
from stempress.reduce.sufficiency import Target, binned_calibration
from stempress.sinks.reduce import ReducerSink


def run_reducers(source_or_blocks: Dataset4D | np.ndarray | Iterable[Block], reducers: Sequence[Reducer], *,
                 rows: int | None = None, progress: Progress | None = None,
                 calibration: Calibration | None = None, shape: Shape4 | None = None,
                 metadata: dict[str, Any] | None = None, executor: Executor | None = None) -> Results:
    """All reducers over every scan row in ONE pass (``engine.run`` with a ``ReducerSink``); returns
    ``{reducer name: {output name: array}}``.

    ``source_or_blocks``: a source (read ``rows`` scan rows at a time, default the engine's block budget), an
    in-memory 4-D array, or an iterable of ``Block`` s (then ``shape`` is required; blocks may come in any order
    but must cover every row once; out of order, float sums may differ in the last bit, counts never do).
    ``calibration`` defaults to what the source's metadata carries. ``executor``: several workers reduce
    partitions that merge in row order, with results identical to one pass (bit for bit for integer data and
    for sums float64 holds exactly). ``progress(bytes_done, bytes_total)``.
    """
    check_names(reducers)
    source = _as_source(source_or_blocks, shape, metadata)
    if calibration is None and metadata is not None:
        calibration = Calibration.from_metadata(metadata, source.shape[2:])
    with single_blas_thread():
        (results,) = run(source, [ReducerSink(reducers, calibration)], executor=executor, progress=progress,
                         rows=rows)
    return results


def _as_source(source_or_blocks: Dataset4D | np.ndarray | Iterable[Block], shape: Shape4 | None,
               metadata: dict[str, Any] | None) -> Dataset4D | BlockStream:
    if isinstance(source_or_blocks, np.ndarray):
        return ArraySource(source_or_blocks, metadata=dict(metadata or {}))
    if isinstance(source_or_blocks, Dataset4D):
        return source_or_blocks
    if shape is None:
        raise StempressError("reducing a stream of blocks needs the cube's shape=(scan_y, scan_x, det_y, det_x)")
    blocks = iter(source_or_blocks)
    first = next(blocks, None)
    if first is None:
        raise StempressError("the block stream is empty; nothing to reduce")
    return BlockStream(itertools.chain([first], blocks), tuple(shape), first.data.dtype, metadata=dict(metadata or {}))


def compute(targets: Sequence[Target], frames: Dataset4D, cal: Calibration, scale: int = 1,
            rows: int | None = None, executor: Any = None) -> dict[str, dict[str, np.ndarray]]:
    """Every target from ``frames`` (a cube, or its detector binned ``scale`` x) in one pass, by label, on
    ``executor`` (an ``exec`` Executor, default inline; the same bits on any)."""
    reducers = [t.reducer(cal, scale, name=f"t{i}") for i, t in enumerate(targets)]
    results = run_reducers(frames, reducers, rows=rows, calibration=binned_calibration(cal, scale, frames.shape[2:]),
                           executor=executor)
    det = None if cal.det_shape is None else tuple(cal.det_shape)
    out = ReducerResults({t.label: t.extract(results[f"t{i}"], scale, det) for i, t in enumerate(targets)})
    out.nonfinite = results.nonfinite  # NaN / infinite values taken as 0, for the caller to tell
    return out


def calibrate(source: Dataset4D, *, sample_rows: int | None = 16, rows: int | None = None) -> Calibration:
    """Measure the calibration of a source on its mean pattern over ``sample_rows`` evenly spaced scan rows
    (None: every row), so a large cube costs a few rows, not a pass."""
    scan_y = source.shape[0]
    if sample_rows is None or sample_rows >= scan_y:
        pattern = run_reducers(source, [MeanPattern()], rows=rows)["mean_pattern"]["mean"]
    else:
        reducer = MeanPattern()
        state = reducer.start(source.shape, source.dtype)
        picks = np.unique(np.linspace(0, scan_y - 1, max(1, sample_rows)).round().astype(int))
        with single_blas_thread():
            for r in picks:
                reducer.process(state, Block(int(r), source.read_rows(int(r), int(r) + 1)))
        pattern = reducer.finish(state)["mean"]
    return estimate_calibration(pattern, source.metadata)


def source_calibration(source: Dataset4D, *, centre: tuple[float, float] | None = None,
                       bf_radius: float | None = None) -> Calibration:
    """What the user gave (``centre`` (y, x) and ``bf_radius`` in detector pixels), else the source's own centre
    and BF radius when it carries them, else measured on its mean pattern."""
    if centre is not None or bf_radius is not None:
        return given_calibration(source, centre=centre, bf_radius=bf_radius)
    cal = Calibration.from_metadata(source.metadata, source.shape[2:])
    return cal if cal.origin == "metadata" and cal.bf_radius_px is not None else calibrate(source)


def given_calibration(source: Dataset4D, *, centre: tuple[float, float] | None = None,
                      bf_radius: float | None = None) -> Calibration:
    """The source's calibration with the beam centre and/or BF radius the user gave; a part not given comes from
    the source's metadata or, failing that, is measured on the mean pattern."""
    det = (int(source.shape[2]), int(source.shape[3]))
    if centre is not None and not (len(centre) == 2 and all(math.isfinite(c) for c in centre)):
        raise StempressError(f"centre {centre} must be two finite numbers Y,X in detector pixels, e.g. --centre "
                             f"{(det[0] - 1) / 2:g},{(det[1] - 1) / 2:g}")
    if bf_radius is not None and not (math.isfinite(bf_radius) and bf_radius > 0):
        raise StempressError(f"BF radius {bf_radius} must be a positive number of detector pixels (--bf-radius)")
    base = Calibration.from_metadata(source.metadata, det)
    known = base.origin == "metadata" and base.bf_radius_px is not None
    if (centre is None or bf_radius is None) and not known:
        base = calibrate(source)
    cy, cx = centre if centre is not None else (base.centre_y, base.centre_x)
    return dataclasses.replace(base, centre_y=float(cy), centre_x=float(cx),
                               bf_radius_px=float(bf_radius) if bf_radius is not None else base.bf_radius_px,
                               origin="given" if centre is not None and bf_radius is not None else
                               f"given {'centre' if centre is not None else 'BF radius'}, rest {base.origin}")
