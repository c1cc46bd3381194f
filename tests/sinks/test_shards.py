"""--shards: one HDF5 file per partition plus a master whose virtual dataset shows one cube; read back with plain
h5py, verified through the master, and never half there (real HDF5 and codecs throughout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - plain h5py users import it to decode Blosc
import numpy as np
import pytest

from stempress.codecs.catalog import get_codec
from stempress.data.open import open_source
from stempress.engine import run
from stempress.errors import StempressError
from stempress.exec import make_executor
from stempress.sinks.archive import ArchiveSpec
from stempress.sinks.shards import SHARDS_ATTR, ShardedArchiveSink, shard_folder
from stempress.store.compress import compress
from stempress.store.verify import verify

SCAN = (13, 6, 24, 24)  # 13 scan rows in chunks of 4: partitions of an even split would cut through chunks
CHUNKS = (4, 3, 24, 24)


@pytest.fixture(scope="module")
def cube_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shards") / "cube.npy"
    np.save(path, np.random.default_rng(7).poisson(2.0, SCAN).astype(np.uint16))
    return path


def stored_chunks(path: Path, dataset: str, row0: int = 0) -> dict[tuple[int, ...], bytes]:
    """Every chunk's stored bytes, keyed by its offset in the whole cube."""
    found = {}
    with h5py.File(path, "r") as f:
        dset = f[dataset]
        for i in range(dset.id.get_num_chunks()):
            info = dset.id.get_chunk_info(i)
            offset = tuple(info.chunk_offset)
            found[(offset[0] + row0, *offset[1:])] = dset.id.read_direct_chunk(offset)[1]
    return found


@pytest.mark.parametrize(("executor", "layout"), [("inline", "emd"), ("threads", "emd"), ("threads", "plain")])
def test_shards_and_master_read_back_bit_identical_with_plain_h5py(cube_file, tmp_path, executor, layout):
    expected = np.load(cube_file)
    with open_source(cube_file) as source, make_executor(executor, 2) as pool:
        single = compress(source, tmp_path / "one.h5", chunks=CHUNKS, layout=layout, executor=pool)
        report = compress(source, tmp_path / "scan.h5", chunks=CHUNKS, layout=layout, executor=pool, shards=True)
    master = tmp_path / "scan.h5"
    with h5py.File(master, "r") as f:
        dset = f[report.dataset_path]
        assert dset.is_virtual and dset.shape == SCAN and dset.dtype == expected.dtype
        assert np.array_equal(dset[()], expected)
        names = [str(n, "utf-8") if isinstance(n, bytes) else str(n) for n in dset.attrs[SHARDS_ATTR]]
    assert all(not Path(n).is_absolute() for n in names)
    shards = sorted(shard_folder(master).iterdir())
    assert [f"{shard_folder(master).name}/{p.name}" for p in shards] == names
    assert report.shards == len(shards) and f"{len(shards)} shard files in scan.h5.shards/" in report.summary()
    if executor == "threads":
        assert len(shards) > 1  # partitions, each its own file
    from_shards: dict[tuple[int, ...], bytes] = {}
    for shard in shards:
        row0 = int(shard.stem.split("-")[1])
        assert row0 % CHUNKS[0] == 0  # shards start on chunk rows
        with h5py.File(shard, "r") as f:
            assert f[report.dataset_path].chunks == CHUNKS  # the same chunks, the last shard's too
        from_shards.update(stored_chunks(shard, report.dataset_path, row0))
    assert from_shards == stored_chunks(single.path, single.dataset_path)  # every chunk as the one file stores it
    moved = tmp_path / "moved"  # relative paths: the folder moves as a whole
    moved.mkdir()
    shutil.move(master, moved / master.name)
    shutil.move(shard_folder(master), moved / shard_folder(master).name)
    with h5py.File(moved / master.name, "r") as f:
        assert np.array_equal(f[report.dataset_path][()], expected)
    with open_source(moved / master.name) as reopened:  # stempress's own reader
        assert np.array_equal(reopened.read_rows(3, 10), expected[3:10])
    checked = verify(moved / master.name)
    assert checked.problem is None and checked.checksums and checked.chunks_checked == checked.chunks_total > 0
    with open_source(cube_file) as source:
        compared = verify(moved / master.name, against=source)
    assert compared.compared and compared.chunks_checked == checked.chunks_checked and compared.note is None


def test_verify_of_a_master_names_a_missing_or_corrupt_shard(cube_file, tmp_path):
    with open_source(cube_file) as source, make_executor("threads", 2) as pool:
        compress(source, tmp_path / "scan.h5", chunks=CHUNKS, executor=pool, shards=True)
    shards = sorted(shard_folder(tmp_path / "scan.h5").iterdir())
    second = shards[1]
    with h5py.File(second, "r+") as f:  # one stored chunk's bytes changed in place
        dset = f["datacube_root/datacube/data"]
        _mask, stored = dset.id.read_direct_chunk((0, 0, 0, 0))
        dset.id.write_direct_chunk((0, 0, 0, 0), bytes([stored[0] ^ 0xFF]) + stored[1:])
    report = verify(tmp_path / "scan.h5")
    assert report.problem is not None and report.problem.kind == "stored" and second.name in report.problem.reason
    assert report.problem.rows is not None and report.problem.rows[0] == int(second.stem.split("-")[1])
    second.unlink()
    report = verify(tmp_path / "scan.h5")
    assert report.problem is not None and "missing" in report.problem.reason


class FailingShards(ShardedArchiveSink):
    """Shards whose run fails (a disk error) at scan row 8, once the earlier shards are complete files."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[str] = []

    def fail(self, start: int) -> None:
        if start >= 8:
            self.seen = [p.name for p in Path(self.spec.path).parent.rglob("rows-*.h5")]
            raise OSError("disk gone")

    def consume(self, block) -> None:
        self.fail(block.start)
        super().consume(block)

    def merge(self, part) -> None:
        self.fail(part.rows[0])
        super().merge(part)


@pytest.mark.parametrize("executor", ["inline", "threads"])
def test_a_failed_run_leaves_no_master_and_no_shards(cube_file, tmp_path, executor, monkeypatch):
    monkeypatch.setattr("stempress.sinks.shards.SHARD_BYTES", 1)  # streaming: a shard per chunk row
    out = tmp_path / "out" / "scan.h5"
    out.parent.mkdir()
    sink = FailingShards(ArchiveSpec(out, get_codec("blosc_zstd"), CHUNKS))
    with open_source(cube_file) as source, make_executor(executor, 2) as pool, \
            pytest.raises(OSError, match="disk gone"):
        run(source, [sink], executor=pool, rows=4)
    assert len(sink.seen) >= 2  # shards were complete files when the run failed
    assert list(out.parent.iterdir()) == []  # no master, no OUT.shards, no staging folder


def test_existing_shards_are_refused_before_any_work(cube_file, tmp_path):
    shard_folder(tmp_path / "scan.h5").mkdir()
    with open_source(cube_file) as source, pytest.raises(StempressError, match="already exists"):
        compress(source, tmp_path / "scan.h5", chunks=CHUNKS, shards=True)
    with open_source(cube_file) as source:  # --force replaces it
        compress(source, tmp_path / "scan.h5", chunks=CHUNKS, shards=True, force=True)
    assert verify(tmp_path / "scan.h5").problem is None


def test_ingest_writes_its_archive_as_shards_in_the_same_pass(cube_file, tmp_path):
    from stempress.ingest import ingest

    with open_source(cube_file) as source:
        report = ingest(source, archive=tmp_path / "scan.h5", chunks=CHUNKS, reduce=["bf"], reduced=tmp_path / "r.h5",
                        workers=2, executor="threads", shards=True)
    assert len(list(shard_folder(tmp_path / "scan.h5").iterdir())) > 1
    with h5py.File(report.archive.path, "r") as f:
        assert np.array_equal(f[report.archive.dataset_path][()], np.load(cube_file))
    assert verify(report.archive.path).problem is None and (tmp_path / "r.h5").is_file()
