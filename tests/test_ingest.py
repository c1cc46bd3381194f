"""``ingest``: one read feeds the archive and the reduced file, each the same as the separate command writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from stempress.data.base import ArraySource
from stempress.data.emd import EMD_DATA_PATH
from stempress.errors import StempressError
from stempress.ingest import ingest
from stempress.reduce.calibration import Calibration
from stempress.reduce.output import read_reduced
from stempress.store.compress import compress
from stempress.store.reduced import reduce_to_file

CAL = Calibration(15.5, 16.0, 5.0, det_shape=(32, 32))


class CountingSource(ArraySource):
    def read_rows(self, start: int, stop: int) -> np.ndarray:
        self.rows_read = getattr(self, "rows_read", 0) + (stop - start)
        return super().read_rows(start, stop)


def _chunks(path) -> dict:
    with h5py.File(path, "r") as f:
        dset = f[EMD_DATA_PATH]
        return {info.chunk_offset: dset.id.read_direct_chunk(info.chunk_offset)[1]
                for info in (dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks()))}


@pytest.fixture
def cube() -> np.ndarray:
    return np.random.default_rng(11).poisson(0.8, (12, 10, 32, 32)).astype(np.uint16)


@pytest.mark.parametrize("workers", [1, 2])
def test_one_read_writes_what_compress_and_reduce_write(tmp_path, cube, workers):
    source = CountingSource(cube, name="cube")
    report = ingest(source, archive=tmp_path / "a.h5", codec="blosc_zstd", reduce=["bf", "com"],
                    reduced=tmp_path / "r.h5", calibration=CAL, workers=workers)
    assert source.rows_read == cube.shape[0] and report.bytes_read == cube.nbytes
    compress(ArraySource(cube, name="cube"), tmp_path / "c.h5", codec="blosc_zstd", workers=workers)
    assert _chunks(tmp_path / "a.h5") == _chunks(tmp_path / "c.h5")  # chunk for chunk, byte for byte
    reduce_to_file(ArraySource(cube, name="cube"), ["bf", "com"], tmp_path / "s.h5", calibration=CAL)
    (one, _), (separate, _) = read_reduced(tmp_path / "r.h5"), read_reduced(tmp_path / "s.h5")
    assert list(one) == list(separate) == ["bf", "com"]
    for target in one:
        assert one[target].keys() == separate[target].keys()
        for key in one[target]:
            np.testing.assert_array_equal(one[target][key], separate[target][key])


def test_outputs_are_refused_before_the_pass(tmp_path, cube):
    (tmp_path / "a.h5").write_bytes(b"mine")
    source = CountingSource(cube)
    with pytest.raises(StempressError, match="already exists; pass --force"):
        ingest(source, archive=tmp_path / "a.h5", reduce=["bf"], reduced=tmp_path / "r.h5", calibration=CAL)
    assert getattr(source, "rows_read", 0) == 0 and (tmp_path / "a.h5").read_bytes() == b"mine"
    assert not (tmp_path / "r.h5").exists()
    with pytest.raises(StempressError, match="at least one output"):
        ingest(source)
    with pytest.raises(StempressError, match="go together"):
        ingest(source, reduce=["bf"])


def test_the_reduced_file_sink_merges_so_reduce_runs_on_partitions(tmp_path, cube):
    from stempress.sinks.protocol import MergeableSink
    from stempress.sinks.reduced import ReducedFileSink

    assert isinstance(ReducedFileSink(ArraySource(cube), ["bf"], tmp_path / "r.h5", calibration=CAL), MergeableSink)
