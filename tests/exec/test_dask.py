"""Dask as an executor: the same sinks on a cluster give the same bits as inline (one LocalCluster of two worker
processes for the whole module: starting one costs seconds)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("distributed")

from stempress.codecs.parallel import ChunkEncoder
from stempress.data.base import Block
from stempress.data.open import open_source, spec_of
from stempress.engine import run
from stempress.errors import StempressError
from stempress.exec import make_executor
from stempress.exec.dask import DaskExecutor, parse_dask
from stempress.ingest import ingest
from stempress.reduce import MaxPattern, default_reducers
from stempress.sinks import archive as archive_sink
from stempress.sinks.protocol import RunInfo
from stempress.sinks.reduce import ReducerSink
from stempress.store.compress import compress
from stempress.store.reduced import reduce_to_file
from stempress.store.reducing import calibrate, run_reducers
from stempress.store.verify import verify


@pytest.fixture(scope="module")
def dask() -> DaskExecutor:
    import dask.config

    with DaskExecutor("local:2") as executor:
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):  # a task may kill one worker only
            executor.client  # noqa: B018 - starts the cluster under that setting
        yield executor


def _thread_counts() -> list[int]:
    import blosc2  # its default is one thread per core; the worker plugin sets one
    from threadpoolctl import threadpool_info

    return [int(pool["num_threads"]) for pool in threadpool_info()] + [int(blosc2.nthreads)]


def test_addresses_are_parsed_without_starting_a_cluster():
    assert parse_dask("local") == ("local", None)
    assert parse_dask("local:3") == ("local", 3)
    assert parse_dask("tcp://node7:8786") == ("address", None)
    assert make_executor("dask:local:3").workers == 3  # known without a cluster: none was started
    remote = make_executor("dask", 2, address="tcp://node7:8786")
    assert isinstance(remote, DaskExecutor) and remote.address == "tcp://node7:8786" and remote.remote
    for bad in ("local:0", "local:two", "node7"):
        with pytest.raises(StempressError, match="--dask"):
            parse_dask(bad)
    with pytest.raises(StempressError, match="takes no address"):
        make_executor("threads", 2, address="tcp://node7:8786")


def test_tasks_come_back_in_order_from_workers_limited_to_one_thread(dask):
    assert dask.workers == 2
    assert list(dask.map_ordered(abs, range(-6, 6), in_flight=3)) == [abs(i) for i in range(-6, 6)]
    limits = dask.client.run(_thread_counts)
    assert len(limits) == 2 and all(counts and set(counts) == {1} for counts in limits.values())
    with pytest.raises(ZeroDivisionError):  # a task's own error is raised as it was
        list(dask.map_ordered(lambda x: 1 // x, [1, 0, 2]))


def test_a_client_given_stays_the_callers(dask):
    borrowed = DaskExecutor(dask.client)
    assert borrowed.workers == 2 and list(borrowed.map_ordered(abs, [-1, -2])) == [1, 2]
    borrowed.close()
    assert dask.client.status == "running"  # not closed by the executor that borrowed it


# -- the engine's partitions and the archive writer on the cluster -------------------------------------------
SCAN = (13, 6, 24, 24)  # 13 scan rows in chunks of 4: the engine's partitions cut through chunks
CHUNKS = (4, 3, 24, 24)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("dask")
    cube = np.random.default_rng(5).poisson(2.0, SCAN).astype(np.uint16)
    np.save(folder / "cube.npy", cube)
    with open_source(folder / "cube.npy") as source:
        compress(source, folder / "cube.h5", codec="blosc_zstd", chunks=CHUNKS, workers=1)
    return {"synthetic": "synthetic:smoke/4D_Diff", "npy": str(folder / "cube.npy"), "h5": str(folder / "cube.h5")}


class WorkerPids:
    """A mergeable sink that records which process read each row (proof the partitions ran on the workers)."""

    name = "pids"

    def open(self, info: RunInfo) -> None:
        self.start, stop = info.row_range
        self.pids = np.zeros(stop - self.start, np.int64)

    def consume(self, block: Block) -> None:
        self.pids[block.start - self.start:block.stop - self.start] = os.getpid()

    def partial(self, rows: tuple[int, int]) -> WorkerPids:
        return WorkerPids()

    def merge(self, other: WorkerPids) -> None:
        self.pids[other.start - self.start:other.start - self.start + len(other.pids)] = other.pids

    def finish(self) -> np.ndarray:
        return self.pids


def _same_results(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert a[name][key].dtype == b[name][key].dtype and np.array_equal(a[name][key], b[name][key]), \
                f"{name}/{key} differs"


def _datasets(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


@pytest.mark.parametrize("kind", ["synthetic", "npy", "h5"])
def test_reducers_on_dask_partitions_are_bit_identical_to_inline(dask, files, kind, tmp_path):
    with open_source(files[kind]) as source:
        assert spec_of(source) is not None  # workers reopen it; no data is shipped
        reducers = [*default_reducers(calibrate(source, sample_rows=None)), MaxPattern()]
        inline = run_reducers(source, reducers)
        _same_results(inline, run_reducers(source, reducers, executor=dask))
        (pids,) = run(source, [WorkerPids()], executor=dask)
        assert os.getpid() not in set(pids.tolist())  # every row was read by a worker process
        targets = ["bf", "adf", "com", "mean_pattern"]
        written = [reduce_to_file(source, targets, tmp_path / f"{name}.h5", executor=executor)
                   for name, executor in (("inline", None), ("dask", dask))]
    inline_sets, dask_sets = (_datasets(p) for p in written)
    assert inline_sets.keys() == dask_sets.keys() and inline_sets
    for key, value in inline_sets.items():
        if key.endswith("provenance/time"):
            continue
        if key.endswith("provenance/json"):  # the same record but for when it was written
            value, other = ({k: v for k, v in json.loads(x).items() if k != "time"} for x in (value, dask_sets[key]))
            assert value == other
        else:
            assert np.array_equal(value, dask_sets[key]), key


def _bytes_but_uuid(path: Path) -> bytes:
    """The file's bytes with its EMD UUID (new for every file written, by the EMD layout) blanked."""
    with h5py.File(path, "r") as f:
        uuid = str(f.attrs["UUID"]).encode()
    data = path.read_bytes()
    assert data.count(uuid) == 1
    return data.replace(uuid, b"-" * len(uuid))


def _not_here(start: int, stop: int) -> np.ndarray:
    raise AssertionError(f"rows {start}..{stop} were read by the client, not by a worker")


@pytest.mark.parametrize("codec", ["blosc_zstd", "gzip_6"])
def test_compress_on_dask_is_byte_identical_and_verifies(dask, files, codec, tmp_path, monkeypatch):
    with open_source(files["npy"]) as source:
        inline = compress(source, tmp_path / "inline.h5", codec=codec, chunks=CHUNKS, workers=1)
        monkeypatch.setattr(source, "read_rows", _not_here)  # the workers read and compress; this process writes
        on_dask = compress(source, tmp_path / "dask.h5", codec=codec, chunks=CHUNKS, executor=dask)
    assert on_dask.direct and on_dask.workers == 2
    assert _bytes_but_uuid(inline.path) == _bytes_but_uuid(on_dask.path)
    report = verify(on_dask.path)
    assert report.problem is None and report.checksums and report.chunks_checked == report.chunks_total > 0


def test_compress_shards_on_dask_are_written_by_the_workers_and_read_back_as_one_cube(dask, files, tmp_path,
                                                                                    monkeypatch):
    from stempress.sinks.shards import shard_folder

    with open_source(files["npy"]) as source:
        expected = source.read_rows(0, SCAN[0])
        monkeypatch.setattr(source, "read_rows", _not_here)  # the workers read, compress and write their shards
        report = compress(source, tmp_path / "scan.h5", codec="gzip_6", chunks=CHUNKS, executor=dask, shards=True)
    shards = sorted(shard_folder(report.path).iterdir())
    assert len(shards) > 1 and all(int(p.stem.split("-")[1]) % CHUNKS[0] == 0 for p in shards)
    with h5py.File(report.path, "r") as f:
        assert f[report.dataset_path].is_virtual and np.array_equal(f[report.dataset_path][()], expected)
    checked = verify(report.path)
    assert checked.problem is None and checked.checksums and checked.chunks_checked == checked.chunks_total > 0


def test_progress_comes_from_inside_remote_partitions(dask, files):
    from stempress.engine import partitions_for

    calls: list[tuple[int, int]] = []
    with open_source(files["h5"]) as source:
        ranges = partitions_for(source, dask.workers)
        assert any(stop - start > 1 for start, stop in ranges)  # partitions of several one-row blocks
        run(source, [WorkerPids()], executor=dask, rows=1, progress=lambda done, total: calls.append((done, total)))
        total = source.shape[0] * int(np.prod(source.shape[1:])) * np.dtype(source.dtype).itemsize
    assert len(calls) > len(ranges)  # reported block by block, not only as each partition's result arrived
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and dones[-1] == total and {t for _, t in calls} == {total}


COUNT_SPEC = ("synthetic:diffraction?scan=13x5&det=16x16&mode=integrating&gain=40&read_noise=2&dose=80&dtype=uint16"
              "&offset=100&seed=5")


@pytest.mark.parametrize("name", ["counted.toml", "counted.h5"])
def test_count_on_dask_partitions_writes_the_inline_file(dask, tmp_path, name, monkeypatch):
    from stempress.events.counting import CountingParams
    from stempress.events.libertem import raw_csr_files
    from stempress.store.count import count_to_file

    params = CountingParams(dark=100.0, gain=40.0, threshold=20.0, method="cluster", cluster_count="sum")
    (tmp_path / "inline").mkdir()
    (tmp_path / "dask").mkdir()
    with open_source(COUNT_SPEC) as source:
        inline = count_to_file(source, tmp_path / "inline" / name, params, inputs={"source": COUNT_SPEC})
        monkeypatch.setattr(source, "read_rows", _not_here)  # the workers read and count; events come back
        on_dask = count_to_file(source, tmp_path / "dask" / name, params, inputs={"source": COUNT_SPEC},
                                executor=dask)
    assert on_dask.n_electrons == inline.n_electrons > 0 and on_dask.n_events == inline.n_events
    files = [Path(name), *(raw_csr_files(Path(name)).values() if name.endswith(".toml") else [])]
    for each in files:
        ours, theirs = ((tmp_path / where / each.name).read_bytes() for where in ("dask", "inline"))
        stamp = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")  # the provenance time
        assert stamp.sub(b"", ours) == stamp.sub(b"", theirs), each.name


def test_plan_on_dask_gives_the_inline_table_and_choice(dask, files):
    from stempress.plan import plan

    with open_source(files["npy"]) as source:
        inline, chosen = plan(source, ["bf", "com"], 0.01, codecs=("blosc_zstd",), bins=(2,))
        ran = _tasks_run(dask)
        on_dask, chosen_dask = plan(source, ["bf", "com"], 0.01, codecs=("blosc_zstd",), bins=(2,), executor=dask)
    assert _tasks_run(dask) > ran and chosen == chosen_dask
    assert inline.equals(on_dask)  # every cell, NaN where NaN: the same bits


# -- the command line ------------------------------------------------------------------------------------------
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "stempress", *args], capture_output=True, text=True, cwd=cwd,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def _tasks_run(dask: DaskExecutor) -> int:
    return sum(dask.client.run(lambda dask_worker: dask_worker.state.executed_count).values())


def test_dask_option_of_compress_reduce_and_ingest_gives_the_inline_outputs(dask, files, tmp_path, monkeypatch):
    address = dask.client.scheduler.address  # the module's cluster, reached by address as a user's would be
    source = Path(files["npy"])
    (tmp_path / source.name).symlink_to(source)  # a path relative to the command's folder: workers get it whole
    monkeypatch.chdir(tmp_path)  # the source's metadata names the file as given, so give it the same way
    with open_source(source.name) as cube:  # inline, through the API the commands call
        compress(cube, tmp_path / "inline.h5", chunks=CHUNKS, workers=1)
        reduce_to_file(cube, ["bf", "com"], tmp_path / "inline-red.h5")
        ingest(cube, archive=tmp_path / "inline-in.h5", chunks=CHUNKS, reduce=["adf"],
               reduced=tmp_path / "inline-in-red.h5", workers=1, executor="inline")
    chunks = "x".join(map(str, CHUNKS))
    ran = _tasks_run(dask)
    said = _cli("compress", source.name, "dask.h5", "--chunks", chunks, "--dask", address, cwd=tmp_path).stdout
    assert "2 workers" in said and _tasks_run(dask) > ran
    ran = _tasks_run(dask)
    said = _cli("reduce", source.name, "--target", "bf", "--target", "com", "--out", "dask-red.h5", "--dask", address,
                cwd=tmp_path).stdout
    assert _tasks_run(dask) > ran
    done = [line for line in said.splitlines() if line.startswith("reduce:") and "(100%)" in line]
    assert done and re.search(r"[\d,]+ frames/s, [\d.e+-]+ GB/s, 2 workers$", done[-1]), said  # the bar's rates
    ran = _tasks_run(dask)
    _cli("ingest", source.name, "--archive", "dask-in.h5", "--chunks", chunks, "--reduce", "adf",
         "--reduced", "dask-in-red.h5", "--dask", address, cwd=tmp_path)
    assert _tasks_run(dask) > ran
    for archive in ("{}.h5", "{}-in.h5"):
        inline, on_dask = (_bytes_but_uuid(tmp_path / archive.format(n)) for n in ("inline", "dask"))
        assert inline == on_dask
    for reduced in ("{}-red.h5", "{}-in-red.h5"):
        inline, on_dask = (_datasets(tmp_path / reduced.format(n)) for n in ("inline", "dask"))
        assert inline.keys() == on_dask.keys()
        assert all(np.array_equal(v, on_dask[k]) for k, v in inline.items() if not k.endswith(("time", "json")))


def test_dask_option_of_count_and_plan(dask, files, tmp_path):
    from stempress.events.counting import CountingParams
    from stempress.store.count import count_to_file

    address = dask.client.scheduler.address
    with open_source(COUNT_SPEC) as source:
        count_to_file(source, tmp_path / "inline.h5", CountingParams(dark=100.0, gain=40.0, threshold=20.0),
                      inputs={"source": COUNT_SPEC})
    ran = _tasks_run(dask)
    _cli("count", COUNT_SPEC, "--out", "dask.h5", "--dark", "100", "--gain", "40", "--threshold", "20",
         "--dask", address, cwd=tmp_path)
    assert _tasks_run(dask) > ran
    with open_source(tmp_path / "dask.h5") as ours, open_source(tmp_path / "inline.h5") as theirs:
        assert np.array_equal(ours.read_rows(0, 13), theirs.read_rows(0, 13))  # the same counts as inline
    ran = _tasks_run(dask)
    said = _cli("plan", files["npy"], "--target", "bf", "--dask", address, cwd=tmp_path).stdout
    assert "least burdensome representation" in said and _tasks_run(dask) > ran


def test_a_bad_dask_option_is_one_line_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stempress", "reduce", "synthetic:smoke/4D_Diff", "--target", "bf",
                             "--out", str(tmp_path / "r.h5"), "--dask", "local:none"], capture_output=True, text=True)
    assert result.returncode != 0 and "local worker count" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.h5").exists()


# -- verify: the workers decode and check partitions of the stored file --------------------------------------
def _verify_in_blocks_of_one_chunk_row(monkeypatch) -> None:
    """Blocks (and so the remote partitions) of one chunk row: the 13-row file is 4 partitions, the last short."""
    monkeypatch.setattr(_verify_module(), "BLOCK_BYTES", CHUNKS[0] * int(np.prod(SCAN[1:])) * 2)


def _verify_module() -> Any:
    import importlib

    return importlib.import_module("stempress.store.verify")  # the module; stempress.store.verify is its function


def _decoding_here(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the client decoded chunks; the workers should have")


def test_verify_on_dask_decodes_and_checks_every_chunk_on_the_workers(dask, files, monkeypatch):
    _verify_in_blocks_of_one_chunk_row(monkeypatch)
    inline = verify(files["h5"], workers=1)
    monkeypatch.setattr(_verify_module(), "read_chunks_parallel", _decoding_here)  # here only: workers import theirs
    ran = _tasks_run(dask)
    with open_source(files["npy"]) as same:
        report = verify(files["h5"], against=same, executor=dask)
    assert _tasks_run(dask) >= ran + 4  # one task per partition
    assert report.ok and report.verified and report.compared and report.checksums
    assert report.chunks_checked == report.chunks_total == inline.chunks_total == 8
    assert report.summary().endswith(": OK")


def test_verify_on_dask_names_a_damaged_chunk_where_inline_does(dask, files, tmp_path, monkeypatch):
    import shutil

    from damage import flip_byte
    from stempress.data.checksums import CHECKSUM_GROUP, checksum_group_path
    from stempress.store import EMD_DATA_PATH

    _verify_in_blocks_of_one_chunk_row(monkeypatch)
    with open_source(files["npy"]) as source:
        path = compress(source, tmp_path / "gzip.h5", codec="gzip_6", chunks=CHUNKS, workers=1).path
    unsummed, wrong_crc = tmp_path / "unsummed.h5", tmp_path / "wrong-crc.h5"
    shutil.copy(path, unsummed)
    shutil.copy(path, wrong_crc)
    with h5py.File(unsummed, "r+") as f:  # no stored CRCs: only decoding (deflate's Adler-32) finds the damage
        del f[CHECKSUM_GROUP]
    for damaged in (path, unsummed):
        with h5py.File(damaged, "r") as f:
            dset = f[EMD_DATA_PATH]
            info = dset.id.get_chunk_info_by_coord((8, 3, 0, 0))  # chunk (2, 1, 0, 0): a later partition's
        flip_byte(damaged, info.byte_offset + info.size // 2)
    with h5py.File(wrong_crc, "r+") as f:  # the decoded bytes' CRC wrong: the workers' DecodedCheckSink says so
        group = f[checksum_group_path(EMD_DATA_PATH)]
        raw = group.attrs["raw_crc"]
        raw[3, 1, 0, 0] ^= 1
        group.attrs["raw_crc"] = raw
    expected = {path: ("stored", (2, 1, 0, 0)), unsummed: ("decoded", (2, 1, 0, 0)),
                wrong_crc: ("decoded", (3, 1, 0, 0))}
    for damaged, (kind, chunk) in expected.items():
        inline, ran = verify(damaged, workers=1), _tasks_run(dask)
        on_dask = verify(damaged, executor=dask)
        assert (_tasks_run(dask) > ran) == (kind == "decoded")  # stored bytes' CRCs are checked here, no decoding
        assert on_dask.problem == inline.problem and inline.problem.kind == kind and inline.problem.chunk == chunk
        assert on_dask.chunks_checked == inline.chunks_checked < inline.chunks_total
        assert on_dask.summary() == inline.summary() and "FAILED at scan row" in on_dask.summary()


def test_verify_on_dask_against_another_cube_names_the_first_difference_as_inline(dask, files, tmp_path,
                                                                                   monkeypatch):
    cube = np.load(files["npy"])
    other = cube.copy()
    other[5, 3, 7, 9] += 1  # the second partition
    other[9, 0, 0, 0] += 1  # the third: found there too, but later in row order
    other[12, 5, 1, 1] += 1  # the last
    np.save(tmp_path / "other.npy", other)
    _verify_in_blocks_of_one_chunk_row(monkeypatch)
    with open_source(tmp_path / "other.npy") as against:
        inline = verify(files["h5"], against=against, workers=1)
        ran = _tasks_run(dask)
        on_dask = verify(files["h5"], against=against, executor=dask)
        assert _tasks_run(dask) > ran
    assert on_dask.problem == inline.problem and inline.problem.where() == "scan position (5, 3)"
    assert "detector pixel (7, 9)" in inline.problem.reason and on_dask.summary() == inline.summary()
    ran = _tasks_run(dask)
    said = subprocess.run([sys.executable, "-m", "stempress", "verify", files["h5"], "--against",
                           str(tmp_path / "other.npy"), "--dask", dask.client.scheduler.address],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert said.returncode != 0 and _tasks_run(dask) > ran
    assert "scan position (5, 3)" in said.stderr and "detector pixel (7, 9)" in said.stderr
    assert len(said.stderr.strip().splitlines()) == 1


# -- verify of event and frame files: the workers reopen the file and check their partitions ----------------
EVENT_SCAN = (8, 6, 16, 16)


def _same_report(a: Any, b: Any) -> None:
    """Two reports equal in everything but the time taken and the note on where the checks ran."""
    from dataclasses import replace

    assert replace(a, seconds=0.0, note=None) == replace(b, seconds=0.0, note=None)
    assert a.summary() == b.summary()


def _source_file(kind: str, folder: Path) -> tuple[Path, tuple[int, int] | None]:
    """A file of ``kind`` holding the module's event cube (a real .mib read as 4 x 2), and its scan shape option."""
    import shutil

    from real_data import real_file
    from stempress.data.base import ArraySource
    from stempress.events import write_raw_csr, write_stempy
    from stempress.events.entropy_file import write_entropy_events

    if kind == "mib":
        for suffix in (".mib", ".hdr"):
            shutil.copy(real_file("001_4x2_6bit" + suffix), folder / ("scan" + suffix))
        return folder / "scan.mib", (4, 2)
    if kind == "nxmx":  # a DECTRIS master and its data file, frames in bitshuffle-LZ4 chunks of one frame
        for name in ("test_00_master.h5", "test_00_data_000001.h5"):
            shutil.copy(real_file(name), folder / name)
        return folder / "test_00_master.h5", None
    data = np.random.default_rng(3).poisson(0.3, EVENT_SCAN).astype(np.uint8)
    if kind == "npy":
        np.save(folder / "scan.npy", data)
        return folder / "scan.npy", None
    if kind == "entropy":  # chunks of two scan rows: four partitions, each decoding and checking its own chunks
        return write_entropy_events(ArraySource(data), folder / "scan.h5", chunk_rows=2), None
    writer = write_raw_csr if kind == "raw_csr" else write_stempy
    return writer(ArraySource(data), folder / ("scan.toml" if kind == "raw_csr" else "scan.h5")), None


def _damage(kind: str, path: Path) -> None:
    """Flip bytes of two later scan rows (the entropy file: one chunk's coded words), as bit rot would."""
    from damage import flip_byte
    from stempress.events import raw_csr_files

    if kind == "raw_csr":
        indptr = np.fromfile(raw_csr_files(path)["indptr"], "<i8")
        for row in (3, 6):  # the first value of each row (uint8: one byte each)
            flip_byte(raw_csr_files(path)["data"], int(indptr[row * EVENT_SCAN[1]]), 1)
    elif kind == "stempy":
        with h5py.File(path, "r") as f:
            entries = f["electron_events/frames"][()]
        blob, per_row = path.read_bytes(), len(entries) // EVENT_SCAN[0]
        for row in (3, 6):
            first = next(e for e in entries[row * per_row:(row + 1) * per_row] if len(e))
            assert blob.count(first.astype("<u4").tobytes()) == 1
            flip_byte(path, blob.index(first.astype("<u4").tobytes()), 1)
    elif kind == "nxmx":  # frame 9 (scan row 2) no longer decodes: the reader fails, its row is found
        with h5py.File(path.parent / "test_00_data_000001.h5", "r") as f:
            info = f["entry/data/data"].id.get_chunk_info(9)
        flip_byte(path.parent / "test_00_data_000001.h5", info.byte_offset + info.size // 2)
    elif kind == "entropy":
        with h5py.File(path, "r") as f:
            words, index = f["chunks/words"], f["chunks/index"][()]
            at = words.id.get_offset() + int(index[2, 1] + 1) * words.dtype.itemsize  # chunk 2: scan rows 4-5
        flip_byte(path, at, 0x10)
    else:  # frame files carry no checksums: a pixel of scan row 2 (6 of 8 rows) differs from the source
        frame = path.stat().st_size // 8 if kind == "mib" else None
        at = 5 * frame + frame - 7 if frame else path.stat().st_size - (8 - 2) * 6 * 16 * 16 + 100
        flip_byte(path, at, 1)


@pytest.mark.parametrize("kind", ["npy", "mib", "nxmx", "stempy", "raw_csr", "entropy"])
def test_verify_on_dask_checks_event_and_frame_files_on_the_workers_as_inline(dask, kind, tmp_path, monkeypatch):
    import shutil

    path, scan = _source_file(kind, tmp_path)
    original = tmp_path / "original"
    original.mkdir()
    for each in tmp_path.iterdir():  # the intact file(s), to compare with once the file is damaged
        if each.is_file():
            shutil.copy(each, original / each.name)
    with open_source(original / path.name, scan_shape=scan) as intact:
        reference = original / "reference.npy"
        np.save(reference, intact.read_rows(0, intact.shape[0]))
    checks = []
    for damaged in (False, True):
        if damaged:
            _damage(kind, path)
        with open_source(reference) as against:
            inline = verify(path, against=against, scan_shape=scan)
            alone = verify(path, scan_shape=scan)
            with monkeypatch.context() as patched:
                patched.setattr(_verify_module(), "read_blocks", _decoding_here)  # here only: the workers decode
                ran = _tasks_run(dask)
                on_dask = verify(path, against=against, scan_shape=scan, executor=dask)
                assert _tasks_run(dask) >= ran + 2 and on_dask.note is None  # partitions ran on the workers
                _same_report(inline, on_dask)
                _same_report(alone, verify(path, scan_shape=scan, executor=dask))
        checks.append(on_dask)
    intact, broken = checks
    assert intact.ok and intact.compared and intact.chunks_checked == intact.chunks_total
    assert not broken.ok and broken.problem.rows is not None and broken.chunks_checked < broken.chunks_total
    expected = {"npy": ("differs", 2), "mib": ("differs", 2), "nxmx": ("decoded", 2), "stempy": ("stored", 3),
                "raw_csr": ("stored", 3), "entropy": ("stored", 4)}[kind]
    assert (broken.problem.kind, broken.problem.rows[0]) == expected, broken.summary()
    if kind in ("stempy", "raw_csr"):
        assert broken.bad_chunks == 2  # every bad chunk counted, by the workers of two partitions


def test_verify_on_dask_says_once_why_an_in_memory_reference_is_compared_here(dask, files, tmp_path):
    from stempress.data.base import ArraySource

    path, _ = _source_file("raw_csr", tmp_path)
    with open_source(path) as source:
        data = source.read_rows(0, EVENT_SCAN[0])
    inline = verify(path, against=ArraySource(data))
    ran = _tasks_run(dask)
    here = verify(path, against=ArraySource(data), executor=dask)
    assert _tasks_run(dask) == ran and "held in this process" in here.note and "--against" in here.note
    _same_report(inline, here)
    with open_source(files["npy"]) as cube:  # an HDF5 cube compared with an array: the same note
        in_memory = ArraySource(cube.read_rows(0, SCAN[0]))
    hdf5 = verify(files["h5"], against=in_memory, executor=dask)
    assert hdf5.ok and hdf5.compared and "held in this process" in hdf5.note
    _damage("raw_csr", path)  # the command line: the workers' report, in one line
    ran = _tasks_run(dask)
    said = subprocess.run([sys.executable, "-m", "stempress", "verify", str(path), "--dask",
                           dask.client.scheduler.address], capture_output=True, text=True, timeout=300)
    lines = [line for line in said.stderr.splitlines() if line.strip()]
    assert said.returncode == 1 and len(lines) == 1 and lines[0].endswith(verify(path).summary()), said.stderr
    assert "verify:" not in said.stdout and _tasks_run(dask) > ran  # no note: it ran on the workers


# -- faults: a worker process killed mid-run (last in the module: the nanny restarts it) ----------------------
class KillOnce:
    """Wraps a task or a sink's block work: the first call that meets ``when`` kills its own worker process
    (SIGKILL, as the OOM killer would), once per ``marker`` file; Dask must recompute the lost work."""

    def __init__(self, marker: Path) -> None:
        self.marker, self.client_pid = marker, os.getpid()  # made here, called in a worker: never kill the client

    def strike(self) -> None:
        if os.getpid() != self.client_pid and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


class KilledEncoder(KillOnce):
    """The archive's chunk task, killing its worker on the first chunk of the second chunk row."""

    def __init__(self, marker: Path, inner: Any) -> None:
        super().__init__(marker)
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # the encoder's chunk shape and dataset shape
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, item: tuple[tuple[int, ...], np.ndarray]) -> tuple[bytes, int, int]:
        if item[0][0] == 1:
            self.strike()
        return self.inner(item)


class KilledPids(WorkerPids, KillOnce):
    """``WorkerPids`` whose partition holding scan row 5 kills its worker half way through."""

    def __init__(self, marker: Path) -> None:
        KillOnce.__init__(self, marker)

    def partial(self, rows: tuple[int, int]) -> KilledPids:
        return KilledPids(self.marker)

    def consume(self, block: Block) -> None:
        super().consume(block)
        if block.start <= 5 < block.stop:
            self.strike()


def _worker_pids(dask: DaskExecutor) -> set[int]:
    dask.client.wait_for_workers(2, timeout=60)
    return set(dask.client.run(os.getpid).values())


def test_a_worker_killed_mid_reduce_is_recomputed_and_the_result_identical(dask, files, tmp_path):
    before = _worker_pids(dask)
    with open_source(files["h5"]) as source:
        reducers = [*default_reducers(calibrate(source, sample_rows=None)), MaxPattern()]
        inline = run_reducers(source, reducers)
        pids, results = run(source, [KilledPids(tmp_path / "killed"), ReducerSink(reducers)], executor=dask, rows=1)
    assert (tmp_path / "killed").exists()  # the worker did die
    assert os.getpid() not in set(pids.tolist())
    _same_results(inline, results)
    assert len(_worker_pids(dask) - before) == 1  # the nanny started a new worker process for the dead one


def test_a_worker_killed_mid_compress_is_recomputed_and_the_file_identical(dask, files, tmp_path, monkeypatch):
    before = _worker_pids(dask)
    with open_source(files["npy"]) as source:
        inline = compress(source, tmp_path / "inline.h5", codec="gzip_6", chunks=CHUNKS, workers=1)
        marker = tmp_path / "killed"
        monkeypatch.setattr(archive_sink, "ChunkEncoder", lambda *a: KilledEncoder(marker, ChunkEncoder(*a)))
        on_dask = compress(source, tmp_path / "dask.h5", codec="gzip_6", chunks=CHUNKS, executor=dask)
    assert (tmp_path / "killed").exists()
    assert _bytes_but_uuid(inline.path) == _bytes_but_uuid(on_dask.path)
    assert verify(on_dask.path).problem is None
    assert len(_worker_pids(dask) - before) == 1


def test_compress_on_worker_processes_partitions_the_same_way(files, tmp_path):
    """Any remote executor, not only Dask: the archive merges partitions encoded by the workers."""
    with open_source(files["npy"]) as source:
        inline = compress(source, tmp_path / "inline.h5", codec="blosc_zstd", chunks=CHUNKS, workers=1)
        with make_executor("processes", 2) as processes:
            on_processes = compress(source, tmp_path / "processes.h5", codec="blosc_zstd", chunks=CHUNKS,
                                    executor=processes)
    assert _bytes_but_uuid(inline.path) == _bytes_but_uuid(on_processes.path)


class AlwaysKilled(KilledEncoder):
    """A chunk task that kills every worker that runs it (a chunk that always exhausts a worker's memory)."""

    def strike(self) -> None:
        if os.getpid() != self.client_pid:
            os.kill(os.getpid(), signal.SIGKILL)


def test_workers_dying_again_and_again_stop_compress_in_one_line_with_no_output(dask, files, tmp_path, monkeypatch):
    out = tmp_path / "never.h5"
    monkeypatch.setattr(archive_sink, "ChunkEncoder", lambda *a: AlwaysKilled(tmp_path / "unused", ChunkEncoder(*a)))
    with open_source(files["npy"]) as source, pytest.raises(StempressError, match="Dask workers died") as caught:
        compress(source, out, codec="gzip_6", chunks=CHUNKS, executor=dask)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary partial


def _killed(name: str) -> None:
    from types import SimpleNamespace

    from distributed import KilledWorker

    raise KilledWorker(name, SimpleNamespace(address="tcp://10.0.0.9:40000"), 3)  # as the scheduler words it


def test_a_task_result_read_outside_the_ordered_map_words_a_lost_worker_in_one_line(dask: DaskExecutor) -> None:
    """The archive writer reads its chunks' futures itself (executor.result): a cluster that keeps losing workers
    is still said in one line there, and a task's own error comes through as it was."""
    with pytest.raises(StempressError, match="Dask workers died running encode-chunk several times"):
        dask.result(dask.submit(_killed, "encode-chunk"))
    with pytest.raises(ZeroDivisionError):
        dask.result(dask.submit(divmod, 1, 0))


def test_a_scheduler_left_without_workers_ends_the_wait_in_one_line() -> None:
    """Dask holds a task until some worker joins: a cluster whose workers all died would hang the run forever."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        executor = DaskExecutor(client)
        executor.no_workers_seconds = 0.5
        with pytest.raises(StempressError, match=r"has had no workers for 0\.5 s; start workers") as caught:
            executor.result(executor.submit(divmod, 1, 2))
        assert "\n" not in str(caught.value)
