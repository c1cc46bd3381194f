"""``ingest``: one read feeds the archive and the reduced file, each the same as the separate command writes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from stempress.cli import main
from stempress.codecs.catalog import get_codec
from stempress.data.base import ArraySource, nbytes
from stempress.data.emd import EMD_DATA_PATH
from stempress.data.open import open_source
from stempress.data.synthetic import SyntheticSource
from stempress.engine import run
from stempress.errors import StempressError
from stempress.events import RawCsrSource, raw_csr_files, write_raw_csr
from stempress.events.counting import CountedSource, CountingParams, read_counting_record
from stempress.ingest import ingest
from stempress.reduce.calibration import Calibration
from stempress.reduce.output import read_reduced
from stempress.sinks.archive import ArchiveSink, ArchiveSpec
from stempress.sinks.events import EventSink
from stempress.store.compress import compress
from stempress.store.count import count_to_file
from stempress.store.reduced import reduce_to_file

CAL = Calibration(15.5, 16.0, 5.0, det_shape=(32, 32))
CAL_16 = Calibration(7.5, 7.5, 3.0, det_shape=(16, 16))


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


def test_codec_auto_is_resolved_above_ingest_then_written(tmp_path, cube):
    from stempress.bench.recommend import resolve_auto
    from stempress.store.compress import direct_codecs

    source = CountingSource(cube, name="cube")
    with pytest.raises(StempressError, match="resolve_auto"):  # ingest does not benchmark: one layer too low
        ingest(source, archive=tmp_path / "a.h5", codec="auto")
    assert getattr(source, "rows_read", 0) == 0 and not (tmp_path / "a.h5").exists()
    chosen = resolve_auto("auto", source, None, tmp_path / "a.h5")
    assert chosen in direct_codecs() and resolve_auto("gzip_1", source, None, tmp_path / "a.h5") == "gzip_1"
    report = ingest(source, archive=tmp_path / "a.h5", codec=chosen)
    assert report.archive.path == tmp_path / "a.h5" and sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_the_reduced_file_sink_merges_so_reduce_runs_on_partitions(tmp_path, cube):
    from stempress.sinks.protocol import MergeableSink
    from stempress.sinks.reduced import ReducedFileSink

    assert isinstance(ReducedFileSink(ArraySource(cube), ["bf"], tmp_path / "r.h5", calibration=CAL), MergeableSink)


# -- events in the same pass ---------------------------------------------------------------------------------
ADU = ("synthetic:diffraction?scan=6x5&det=16x16&mode=integrating&gain=40&read_noise=2&dose=60&dtype=uint16"
       "&offset=100&seed=7")
PARAMS = CountingParams(dark=100.0, gain=40.0, threshold=20.0)
_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def _event_files(out: Path) -> list[Path]:
    return [out, *raw_csr_files(out).values()] if out.suffix == ".toml" else [out]


def _timeless(path: Path) -> bytes:
    """A file's bytes with the provenance's write time blanked (the one thing two writes of it differ in)."""
    return _TIME.sub(b"<time>", path.read_bytes())


class CountingADU(SyntheticSource):
    """The integrating synthetic source, counting the scan rows read."""

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        self.rows_read = getattr(self, "rows_read", 0) + (stop - start)
        return super().read_rows(start, stop)


def _adu() -> CountingADU:
    return CountingADU(open_source(ADU).spec)


@pytest.mark.parametrize("name", ["ev.h5", "ev.toml", "ev.entropy.h5"])
@pytest.mark.parametrize("workers", [1, 2])
def test_events_written_in_the_pass_are_the_files_count_writes(tmp_path, name, workers):
    fmt = "entropy" if name.startswith("ev.entropy") else None
    source = _adu()
    report = ingest(source, archive=tmp_path / "a.h5", reduce=["bf"], reduced=tmp_path / "r.h5",
                    events=tmp_path / "one" / name, event_format=fmt, counting=PARAMS, event_inputs={"source": ADU},
                    calibration=CAL_16, workers=workers)
    assert source.rows_read == source.shape[0] and report.bytes_read == nbytes(source)  # read once, for all three
    separate = count_to_file(open_source(ADU), tmp_path / "two" / name, PARAMS, fmt=fmt, inputs={"source": ADU})
    assert report.events is not None and report.events.n_electrons == separate.n_electrons > 500
    assert report.events.n_events == separate.n_events and report.events.warnings == separate.warnings
    for ours, theirs in zip(_event_files(tmp_path / "one" / name), _event_files(tmp_path / "two" / name), strict=True):
        assert _timeless(ours) == _timeless(theirs), ours.name
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in report.events.files)
    assert set(report.outputs) == {tmp_path / "a.h5", tmp_path / "r.h5", *report.events.files}
    with open_source(tmp_path / "one" / name) as back:
        counted = CountedSource(open_source(ADU), PARAMS).read_rows(0, 6)
        np.testing.assert_array_equal(back.read_rows(0, 6), counted)
    assert read_counting_record(tmp_path / "one" / name)["electrons"] == int(counted.sum())


def test_counts_are_written_as_they_are_without_counting(tmp_path, cube):
    source = CountingSource(cube, name="cube")
    report = ingest(source, events=tmp_path / "ev.toml")
    assert source.rows_read == cube.shape[0] and report.events.n_electrons == int(cube.sum())
    assert not report.events.counted and report.events.record == {} and "lossy" not in report.events.summary()
    write_raw_csr(ArraySource(cube, name="cube"), tmp_path / "direct" / "ev.toml")
    for ours, theirs in zip(_event_files(tmp_path / "ev.toml"), _event_files(tmp_path / "direct" / "ev.toml"),
                            strict=True):
        assert _timeless(ours) == _timeless(theirs), ours.name
    with RawCsrSource(tmp_path / "ev.toml") as back:
        np.testing.assert_array_equal(back.read_rows(0, cube.shape[0]), cube)
        assert "counting" not in back.metadata
    with pytest.raises(StempressError, match="not electron counts"):
        ingest(ArraySource(cube.astype(np.float32)), events=tmp_path / "float.h5")
    assert not (tmp_path / "float.h5").exists()


def test_event_outputs_are_refused_before_the_pass(tmp_path, cube):
    (tmp_path / "ev.indices.bin").write_bytes(b"mine")
    source = CountingSource(cube)
    with pytest.raises(StempressError, match=r"ev\.indices\.bin already exists"):
        ingest(source, archive=tmp_path / "a.h5", events=tmp_path / "ev.toml")
    with pytest.raises(StempressError, match="same file"):
        ingest(source, archive=tmp_path / "x.h5", events=tmp_path / "x.h5")
    with pytest.raises(StempressError, match="give --events"):
        ingest(source, archive=tmp_path / "a.h5", counting=PARAMS)
    with pytest.raises(StempressError, match="reference has shape"):  # the references against the detector
        ingest(source, archive=tmp_path / "a.h5", events=tmp_path / "ev.h5",
               counting=CountingParams(dark=np.zeros((4, 4)), threshold=0.5))
    assert getattr(source, "rows_read", 0) == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["ev.indices.bin"]


class FailingADU(CountingADU):
    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if start >= 3:
            raise OSError("the detector file ends here")
        return super().read_rows(start, stop)


@pytest.mark.parametrize("name", ["ev.h5", "ev.toml"])
def test_a_failed_pass_leaves_no_output_and_no_partial(tmp_path, name):
    """The sinks ingest runs, fed a row at a time by the engine, until the source fails halfway: every output
    (archive, events and the events' staging folder) is gone."""
    source = FailingADU(open_source(ADU).spec)
    out = tmp_path / "out"
    sinks = [ArchiveSink(ArchiveSpec(out / "a.h5", get_codec("blosc_zstd"), chunks=(1, 5, 16, 16))),
             EventSink(out / name, PARAMS)]
    with pytest.raises(OSError, match="ends here"):
        run(source, sinks, rows=1, read_ahead_blocks=0)
    assert source.rows_read == 3
    assert not out.exists() or list(out.iterdir()) == []


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["stempress", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_ingest_command_writes_the_events_count_writes(tmp_path, monkeypatch, capsys):
    counting = ["--threshold", 20, "--dark", 100, "--gain", 40]
    code, out, err = _cli(monkeypatch, capsys, "ingest", ADU, "--archive", tmp_path / "a.h5", "--events",
                          tmp_path / "one.toml", *counting)
    assert code == 0, err
    assert "electrons in" in out and "one.toml (raw_csr)" in out
    code, _, err = _cli(monkeypatch, capsys, "count", ADU, "--out", tmp_path / "two.toml", *counting)
    assert code == 0, err
    for ours, theirs in zip(_event_files(tmp_path / "one.toml"), _event_files(tmp_path / "two.toml"), strict=True):
        if ours.suffix == ".bin":
            assert ours.read_bytes() == theirs.read_bytes()
    assert read_counting_record(tmp_path / "one.toml") == read_counting_record(tmp_path / "two.toml")
    code, _, err = _cli(monkeypatch, capsys, "ingest", ADU, "--events", tmp_path / "three.h5", "--dark", 100)
    assert code == 1 and "--dark count electrons, which needs --threshold" in err
    assert not (tmp_path / "three.h5").exists()
