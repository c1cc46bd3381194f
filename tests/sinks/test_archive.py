"""The archive writer's direct-chunk path: chunks stay in flight across blocks, and the file is still complete."""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np

from stempress.codecs.catalog import CATALOG
from stempress.data.base import Block
from stempress.exec.local import ThreadExecutor
from stempress.sinks.archive import ArchiveSink, ArchiveSpec
from stempress.sinks.protocol import RunInfo


class GatedEncoder:
    """The sink's own chunk task, started only once the test opens the gate."""

    def __init__(self, inner, gate: threading.Event) -> None:
        self.inner, self.gate, self.done = inner, gate, 0

    def __call__(self, item):
        self.gate.wait(timeout=20)  # only a writer that waits for the block reaches it
        result = self.inner(item)
        self.done += 1
        return result


def test_a_block_is_handed_back_while_its_chunks_still_encode_and_finish_stores_them(tmp_path: Path) -> None:
    cube = np.random.default_rng(1).poisson(2.0, size=(4, 4, 8, 8)).astype(np.uint16)
    spec = ArchiveSpec(tmp_path / "a.h5", CATALOG["blosc_lz4"], (2, 4, 8, 8), layout="plain")
    gate = threading.Event()
    with ThreadExecutor(2) as pool:
        sink = ArchiveSink(spec)
        sink.open(RunInfo("cube", cube.shape, cube.dtype, {}, None, pool))
        sink.encoder = encoder = GatedEncoder(sink.encoder, gate)
        sink.consume(Block(0, cube[:2]))  # returns without waiting for its chunk: the workers stay busy
        assert encoder.done == 0
        gate.set()
        sink.consume(Block(2, cube[2:]))
        result = sink.finish()
    with h5py.File(result.path, "r") as f:
        data = f[result.dataset_path]
        np.testing.assert_array_equal(data[...], cube)
        assert data.id.get_num_chunks() == 2
