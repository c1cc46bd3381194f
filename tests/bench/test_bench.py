"""The benchmark runner on a tiny grid: numbers only for verified round trips, rows for everything else."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from real_data import REPO
from stempress.bench import protocol
from stempress.bench.measure import Method, measure, methods_for
from stempress.bench.runner import BenchConfig, run_grid
from stempress.bench.statistics import statistics, summary
from stempress.bench.verify import Reference, VerificationError
from stempress.codecs.catalog import get_codec, select_codecs
from stempress.codecs.chunking import chunk_shape
from stempress.data.base import ArraySource, Block
from stempress.data.hdf5 import STUDY_EMD_PATH
from stempress.errors import StempressError


def counted_cube(shape=(6, 5, 24, 32), dtype=np.uint16, seed=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[2], : shape[3]]
    disk = ((yy - shape[2] / 2) ** 2 + (xx - shape[3] / 2) ** 2 < (shape[2] / 4) ** 2) * 20.0
    return rng.poisson(disk + 0.05, size=shape).astype(dtype)


@pytest.fixture
def source() -> ArraySource:
    return ArraySource(counted_cube(), name="tiny")


def test_grid_has_a_row_per_cell_and_verified_numbers(source, tmp_path):
    codecs = select_codecs(["none", "gzip_1", "blosc_lz4", "sparse_csr"])
    config = BenchConfig(codecs=codecs, chunkings=["balanced", "single_frame"], runs=2, workdir=tmp_path,
                         time_limit_s=None)
    rows = run_grid([source], config)
    assert len(rows) == 2 * (3 * 2 + 1)
    assert {r["status"] for r in rows} == {"ok"}
    assert all(r["verified"] for r in rows)
    assert list(tmp_path.iterdir()) == []  # every test file deleted after its run
    names = {r["method"] for r in rows}
    assert {"balanced_gzip_1", "single_frame_blosc_lz4", "sparse_csr"} <= names
    ratios = {r["method"]: r["compression_ratio"] for r in rows if r["run_number"] == 1}
    assert ratios["balanced_gzip_1"] > 2 > ratios["balanced_none"] > 0.5
    for r in rows:
        assert r["write_throughput_gbs"] == pytest.approx(r["raw_bytes"] / 1024**3 / r["write_time"])


def test_event_codecs_run_in_the_grid_and_leave_no_files(source, tmp_path):
    """Counted-electron file codecs (several files each, a .toml sidecar) are measured and cleaned up."""
    config = BenchConfig(codecs=select_codecs(["events_raw_csr", "entropy_poisson"]), chunkings=["balanced"],
                         runs=1, workdir=tmp_path, time_limit_s=None)
    rows = run_grid([source], config)
    assert {r["method"]: r["status"] for r in rows} == {"events_raw_csr": "ok", "entropy_poisson": "ok"}
    assert all(r["verified"] for r in rows)
    ratios = {r["method"]: r["compression_ratio"] for r in rows}
    assert ratios["entropy_poisson"] > ratios["events_raw_csr"] > 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("layout", "dataset_path"), [("study", "data"), ("emd", STUDY_EMD_PATH)])
def test_file_equals_a_plain_h5py_write_of_its_layout(source, tmp_path, layout, dataset_path):
    """The study's script writes ``create_dataset("data", data=cube, chunks=..., **filter)`` at the file root:
    under the default layout our file has exactly its size, so the ratios are the study script's."""
    cube = source.array
    for name in ("gzip_6", "lzf", "szip", "blosc_zstd", "bitshuffle_lz4", "lz4_hdf5", "none"):
        codec = get_codec(name)
        if codec.unavailable_reason():
            continue
        for chunking in ("real_space", "balanced", "single_frame"):
            numbers = measure(source, Method(codec, chunking), tmp_path, layout=layout)
            plain = tmp_path / "plain.h5"
            with h5py.File(plain, "w") as f:
                f.create_dataset(dataset_path, data=cube, chunks=chunk_shape(chunking, cube.shape),
                                 **codec.h5_kwargs())
            if name == "lzf":
                # h5py's LZF output differs by a few bytes between identical writes in different process
                # states (observed: 20418 vs 20422 bytes); both decode bit-exact, so allow 0.1 %.
                assert numbers["file_bytes"] == pytest.approx(plain.stat().st_size, rel=1e-3), chunking
            else:
                assert numbers["file_bytes"] == plain.stat().st_size, (name, chunking)
            assert numbers["compression_ratio"] == pytest.approx(cube.nbytes / numbers["file_bytes"])
            plain.unlink()


def test_the_emd_layout_costs_its_groups_and_an_unknown_layout_is_refused(source, tmp_path):
    method = Method(get_codec("blosc_zstd"), "balanced")
    study = measure(source, method, tmp_path, layout="study")["file_bytes"]
    emd = measure(source, method, tmp_path, layout="emd")["file_bytes"]
    assert emd > study  # four groups of metadata: the bytes the issue measured (4,128 on a real cube)
    with pytest.raises(StempressError, match=r"--layout 'flat'.*study or emd"):
        measure(source, method, tmp_path, layout="flat")


@pytest.mark.parametrize("path", ["filter", "parallel"])
def test_read_time_leaves_out_opening_and_closing_the_file(source, tmp_path, monkeypatch, path):
    """The study times ``dset[:]`` only. A clock that jumps 100 s whenever an HDF5 file is opened or closed
    for reading must leave the read time untouched; the write (create, fill, close) is timed whole."""
    now = [0.0]

    def tick() -> float:
        now[0] += 1e-6
        return now[0]

    class SlowToOpen(h5py.File):
        def __init__(self, name, mode="r", *args, **kwargs):
            super().__init__(name, mode, *args, **kwargs)
            now[0] += 100.0 if mode == "r" else 0.0

        def close(self):
            now[0] += 100.0 if self.id.valid and self.mode == "r" else 0.0
            super().close()

    monkeypatch.setattr(protocol, "clock", tick)
    monkeypatch.setattr(h5py, "File", SlowToOpen)
    numbers = measure(source, Method(get_codec("gzip_1"), "balanced", path, 2), tmp_path)
    assert numbers["verified"] and now[0] > 200  # the file was opened and closed, on the jumping clock
    assert numbers["read_time"] < 1


def test_streamed_cube_is_verified_by_row_digests(source, tmp_path):
    class Streamed:  # a source that is not held in memory: verification must use digests
        name, shape, dtype, metadata = "streamed", source.shape, source.dtype, {}

        def read_rows(self, start, stop):
            return source.array[start:stop].copy()

        def close(self):
            pass

    config = BenchConfig(codecs=[get_codec("blosc_zstd")], chunkings=["balanced"], runs=1, workdir=tmp_path,
                         stage_limit_bytes=0, warmup=False)
    rows = run_grid([Streamed()], config)
    assert rows[0]["status"] == "ok" and rows[0]["in_memory"] is False


@pytest.mark.parametrize("in_memory", [True, False])
def test_reference_rejects_a_changed_bit_and_names_the_row(in_memory):
    cube = counted_cube()
    reference = Reference(cube.shape, cube.dtype, cube if in_memory else None)
    reference.record(Block(0, cube))
    bad = cube.copy()
    bad[4, 1, 3, 3] ^= 1
    reference.check(Block(0, cube[:2]))
    with pytest.raises(VerificationError, match="scan row 4"):
        reference.check(Block(2, bad[2:]))


def test_reference_refuses_a_short_read():
    cube = counted_cube()
    reference = Reference(cube.shape, cube.dtype, cube)
    reference.check(Block(0, cube[:3]))
    with pytest.raises(VerificationError, match="3 scan rows"):
        reference.finish()


def test_nan_and_negative_zero_round_trip_bit_exact(tmp_path):
    cube = counted_cube(dtype=np.float32) / 4
    cube[0, 0, 0, :3] = [np.nan, -0.0, np.inf]
    numbers = measure(ArraySource(cube), Method(get_codec("blosc_zstd"), "balanced"), tmp_path)
    assert numbers["verified"]


def test_time_limit_skips_the_method_in_later_runs(source, tmp_path):
    config = BenchConfig(codecs=[get_codec("gzip_9")], chunkings=["balanced"], runs=2, workdir=tmp_path,
                         time_limit_s=0.0, warmup=False)
    rows = run_grid([source], config)
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert "time limit" in rows[0]["reason"] and "run 1" in rows[1]["reason"]
    assert list(tmp_path.iterdir()) == []


def test_cold_protocol_records_eviction(source, tmp_path):
    numbers = measure(source, Method(get_codec("blosc_lz4"), "balanced"), tmp_path, protocol="cold")
    assert numbers["evicted"] in (True, False, None)
    warm = measure(source, Method(get_codec("blosc_lz4"), "balanced"), tmp_path, protocol="warm")
    assert warm["evicted"] is None


def test_methods_for_runs_baselines_once():
    methods = methods_for(select_codecs("paper"), ["real_space", "balanced", "single_frame"])
    assert len(methods) == 13 * 3 + 3
    assert len({m.name for m in methods}) == len(methods)


def test_statistics_use_the_study_columns(source, tmp_path):
    config = BenchConfig(codecs=select_codecs(["gzip_1", "blosc_lz4"]), chunkings=["balanced"], runs=3,
                         workdir=tmp_path, warmup=False)
    import pandas as pd

    stats = statistics(pd.DataFrame(run_grid([source], config)))
    assert len(stats) == 2 and set(stats["n_runs"]) == {3}
    for column in ("compression_ratio_mean", "write_time_cv_percent", "read_throughput_gbs_median"):
        assert column in stats
    assert (stats["compression_ratio_std"] < 1e-9).all()  # ratios are deterministic
    table = summary(stats)
    assert table["codec"].iloc[0] == "gzip_1"


def test_parallel_path_is_measured_beside_the_filter_path(source, tmp_path):
    codecs = select_codecs(["gzip_6", "blosc_zstd", "lzf"])
    config = BenchConfig(codecs=codecs, chunkings=["balanced"], paths=["filter", "parallel"], workers=2,
                         runs=1, workdir=tmp_path, warmup=False)
    rows = {(r["method"], r["path"]): r for r in run_grid([source], config)}
    assert len(rows) == 6
    for name in ("balanced_gzip_6", "balanced_blosc_zstd"):
        filt, par = rows[(name, "filter")], rows[(name, "parallel")]
        assert filt["status"] == par["status"] == "ok" and par["verified"] and par["workers"] == 2
        assert par["file_bytes"] == filt["file_bytes"]  # the same bytes per chunk, declared the same way
    lzf = rows[("balanced_lzf", "parallel")]
    assert lzf["status"] == "unavailable" and "filter path" in lzf["reason"]
    assert rows[("balanced_lzf", "filter")]["status"] == "ok"


def test_too_little_disk_space_says_how_much_and_leaves_no_folder(tmp_path, monkeypatch):
    """A near-full disk: the message names the cube and sizes in units that show them, and --out is not left
    behind (neither is the folder above it that the run would have made)."""
    from stempress.bench import runner
    from stempress.bench.api import run_bench

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    out = tmp_path / "new" / "results"
    with pytest.raises(StempressError) as err:
        run_bench(suite="smoke", methods=["none", "gzip_1"], chunkings=["balanced"], runs=1, out=out)
    message = str(err.value)
    assert "1000 B free" in message and "needs 1.10 MiB" in message
    assert "0.0 GiB" not in message and "--workdir" in message and "\n" not in message
    assert not (tmp_path / "new").exists()


def test_an_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    from stempress.bench import runner
    from stempress.bench.api import run_bench

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return measure_cell(*args, **kwargs)

    measure_cell = runner.measure_cell
    monkeypatch.setattr(runner, "measure_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_bench(suite="smoke", methods=["gzip_1"], runs=1, out=tmp_path / "out", workdir=tmp_path / "work")
    assert list(tmp_path.iterdir()) == []


def test_nothing_measured_gives_the_table_of_reasons_not_a_traceback(tmp_path):
    from stempress.bench.api import run_bench
    from stempress.report import build_report

    report = run_bench(suite="smoke", methods=["gzip_9"], chunkings=["balanced"], runs=1, time_limit_s=0.0,
                       out=tmp_path / "out")
    assert report.statistics.empty and "no measurement succeeded (5 skipped" in report.nothing_measured
    table = report.problems_table
    assert set(table["status"]) == {"skipped"} and len(table) == 5
    assert table["reason"].str.contains("time limit").all()
    html = build_report(tmp_path / "out").read_text()  # `stempress report` on the folder works too
    assert "no measurement succeeded" in html and "exceeded the 0 s time limit" in html
    (tmp_path / "out" / "statistics.csv").write_text("\n")  # as such a run wrote it before: blank
    assert "no measurement succeeded" in build_report(tmp_path / "out").read_text()


def test_the_default_run_is_the_one_the_readme_promises():
    """The README's first command runs `stempress bench` with its defaults; the time it promises was measured
    for DEFAULT_RUNS runs, and it says how to run the study's full protocol."""
    import inspect

    from stempress.bench.api import DEFAULT_RUNS, STUDY_RUNS, run_bench
    from stempress.cli import bench

    assert inspect.signature(run_bench).parameters["runs"].default == DEFAULT_RUNS
    assert inspect.signature(bench).parameters["runs"].default == DEFAULT_RUNS
    readme = (REPO / "README.md").read_text()
    first = readme[readme.index("The first command"):readme.index("The second command")]
    assert f"x {DEFAULT_RUNS} runs" in first and f"--runs {STUDY_RUNS}" in first


@pytest.mark.parametrize("codec", ["gzip_6", "blosc_zstd"])
def test_a_parallel_bench_cell_stores_what_compress_stores(codec, tmp_path):
    """bench and compress time the same writer: a ``--paths parallel`` cell's cube takes exactly the bytes that
    ``compress`` stores for the same codec and chunks (the files differ only by compress's checksums and
    provenance, which the study's bare benchmark file leaves out)."""
    from stempress.bench.api import run_bench
    from stempress.data.open import open_source
    from stempress.store import compress

    chunks = (2, 5, 12, 32)
    np.save(tmp_path / "cube.npy", counted_cube())
    report = run_bench(sources=[tmp_path / "cube.npy"], methods=[codec], chunkings=[chunks], paths=["parallel"],
                       workers=2, runs=1, out=tmp_path / "bench", time_limit_s=None, warmup=False)
    (cell,) = report.results.to_dict("records")
    assert (cell["status"], cell["path"], cell["method"]) == ("ok", "parallel", f"chunks_2x5x12x32_{codec}")
    with open_source(tmp_path / "cube.npy") as source:
        written = compress(source, tmp_path / "cube.h5", codec=codec, chunks=chunks, workers=2, layout="plain")
    assert written.direct
    with h5py.File(written.path, "r") as f:
        stored = f[written.dataset_path]
        assert stored.chunks == chunks
        assert cell["data_bytes"] == stored.id.get_storage_size() < written.file_bytes


def test_metadata_json_is_strict_json_with_unknown_numbers_as_null(tmp_path):
    import json

    from stempress.bench.results import METADATA_JSON, save_results

    save_results(tmp_path, [{"codec": "gzip_6", "ratio": 2.0}], {"rotation": float("nan"), "cores": np.int64(2),
                                                                   "out": tmp_path})
    text = (tmp_path / METADATA_JSON).read_text()
    meta = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert meta == {"rotation": None, "cores": 2, "out": str(tmp_path)}
