"""The reducer sink's partials: a stream offloads one per block, so in this process they share the run's
constants, and sent to another process they leave the parent's pass behind."""

from __future__ import annotations

import pickle

import numpy as np

from stempress.data.base import Block
from stempress.data.calibration import Calibration
from stempress.reduce.imaging import default_reducers
from stempress.sinks.protocol import RunInfo
from stempress.sinks.reduce import ReducerSink

CAL = Calibration(7.5, 7.5, 3.0, det_shape=(16, 16))


def test_a_partial_shares_the_runs_constants_here_and_travels_without_them():
    cube = np.random.default_rng(2).poisson(2.0, (6, 5, 16, 16)).astype(np.uint16)
    info = RunInfo("cube", cube.shape, cube.dtype)
    sink = ReducerSink(default_reducers(CAL), CAL)
    sink.open(info)
    part = sink.partial((2, 4))
    sent = pickle.dumps(part)
    assert len(sent) < len(pickle.dumps(sink._pass)) // 4  # not the parent's pass with it
    shipped = pickle.loads(sent)
    for p in (part, shipped):
        p.open(info.for_rows(2, 4))
        p.consume(Block(2, cube[2:4]))
    assert all(a.context is b.context for a, b in zip(part._pass.states, sink._pass.states, strict=True))
    assert not any(a.context is b.context for a, b in zip(shipped._pass.states, sink._pass.states, strict=True))
    for a, b in zip(part._pass.states, shipped._pass.states, strict=True):
        assert all(np.array_equal(a.buffers[k], b.buffers[k]) for k in a.buffers)
    sink.merge(part)
    assert sink.rows_reduced == 2
