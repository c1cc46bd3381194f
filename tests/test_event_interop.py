"""Event files other tools read: stempy's HDF5 (version 3) and LiberTEM's raw_csr, written and read block by block."""

from __future__ import annotations

import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse

from real_data import real_file
from stempress.data.base import ArraySource, iter_blocks
from stempress.data.open import open_source
from stempress.data.suites import suite
from stempress.errors import StempressError
from stempress.events import (
    Events,
    RawCsrSource,
    StempySource,
    raw_csr_files,
    write_raw_csr,
    write_stempy,
)

BLOCK_ROWS = (1, 7, None)


def crafted(dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """9 x 3 scan of non-square 5x6 frames: an empty frame, a full frame, a pixel counted 3 times at (0, 0)."""
    rng = np.random.default_rng(seed)
    cube = rng.poisson(0.4, size=(9, 3, 5, 6)).astype(dtype)
    cube[2, 1] = 0
    cube[4, 0] = rng.integers(1, 3, size=(5, 6))
    cube[0, 0] = 0
    cube[0, 0, 1, 4] = 3  # flat pixel 1 * 6 + 4 = 10
    cube[8, 2, 4, 5] = 5  # the largest count, in the last row
    return cube


@pytest.fixture(scope="module")
def counted() -> np.ndarray:
    (source,) = suite("counted")
    return source.read_rows(0, source.shape[0])


@pytest.fixture(scope="module")
def merlin() -> np.ndarray:
    with open_source(real_file("001_4x2_6bit.mib"), scan_shape=(2, 4)) as source:
        return source.read_rows(0, source.shape[0])


def read_all(source, rows: int | None = None) -> np.ndarray:
    parts = [b.data for b in iter_blocks(source, rows or source.shape[0])]
    assert all(p.dtype == source.dtype for p in parts)
    return np.concatenate(parts)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class FailingSource(ArraySource):
    """Dies when asked for scan rows at or beyond ``fail_at``: a crash halfway through a write."""

    fail_at = 3

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if stop > self.fail_at:
            raise OSError("disk gone")
        return super().read_rows(start, stop)


# ---------------------------------------------------------------- stempy


def stempy_like_dense(path: Path) -> np.ndarray:
    """What stempy 3.6's ``SparseArray.from_hdf5(path).to_dense()`` computes, restated from its code:
    scan shape = scan_positions' (Nx, Ny) reversed, frame shape = frames' (Nx, Ny) as is, entries reshaped
    to (positions, frames per position), each frame added with ``dp[entry] += 1`` (a repeat within one
    entry counts once)."""
    with h5py.File(path, "r") as f:
        frames, positions = f["electron_events/frames"], f["electron_events/scan_positions"]
        scan_shape = [int(positions.attrs[k]) for k in ("Nx", "Ny")][::-1]
        frame_shape = [int(frames.attrs[k]) for k in ("Nx", "Ny")]
        data = frames[()]
    n = scan_shape[0] * scan_shape[1]
    data = data.reshape(n, len(data) // n)
    out = np.zeros((n, frame_shape[0] * frame_shape[1]), np.uint32)
    for p in range(n):
        for entry in data[p]:
            out[p][entry] += 1
    return out.reshape(*scan_shape, *frame_shape)


def test_stempy_file_structure(tmp_path: Path) -> None:
    cube = crafted()
    out = write_stempy(ArraySource(cube, name="crafted"), tmp_path / "ev.h5", rows=4)
    with h5py.File(out, "r") as f:
        assert int(f.attrs["version"]) == 3
        frames, positions = f["electron_events/frames"], f["electron_events/scan_positions"]
        assert h5py.check_vlen_dtype(frames.dtype) == np.dtype(np.uint32) and frames.ndim == 1
        k = 5  # frames per position = the largest count
        assert frames.shape == (27 * k,)
        assert (int(frames.attrs["Nx"]), int(frames.attrs["Ny"])) == (5, 6)  # stempy's frame_shape order
        assert (int(positions.attrs["Nx"]), int(positions.attrs["Ny"])) == (3, 9)  # scan width, height
        assert positions.dtype == np.int64
        np.testing.assert_array_equal(positions[()], np.arange(27))
        assert f["metadata/stempress"].attrs["dtype"] == "uint8"
        first = list(frames[0:k])
        assert [e.tolist() for e in first] == [[10], [10], [10], [], []]  # count 3 -> 3 times, once per frame
        for entry in frames[()]:
            assert entry.dtype == np.uint32 and np.all(np.diff(entry.astype(np.int64)) > 0)  # no repeats inside
        assert sum(e.size for e in frames[()]) == cube.sum()  # one index per electron
    np.testing.assert_array_equal(stempy_like_dense(out), cube)


@pytest.mark.parametrize("rows", BLOCK_ROWS)
def test_stempy_round_trip_crafted_and_counted(tmp_path: Path, counted: np.ndarray, rows: int | None) -> None:
    for name, cube in {"crafted": crafted("int16"), "counted": counted}.items():
        out = write_stempy(ArraySource(cube), tmp_path / f"{name}.h5", rows=rows)
        with StempySource(out) as source:
            assert source.shape == cube.shape and source.dtype == cube.dtype
            np.testing.assert_array_equal(read_all(source, rows), cube)
        np.testing.assert_array_equal(stempy_like_dense(out), cube)


@pytest.mark.parametrize("rows", BLOCK_ROWS)
def test_stempy_round_trip_real_merlin(tmp_path: Path, merlin: np.ndarray, rows: int | None) -> None:
    out = write_stempy(ArraySource(merlin), tmp_path / "merlin.h5", rows=rows)
    with StempySource(out) as source:
        assert source.metadata["frames_per_position"] == merlin.max() == 63
        np.testing.assert_array_equal(read_all(source, rows), merlin)


def test_stempy_smoke_cubes(tmp_path: Path) -> None:
    for source in suite("smoke")[:2]:  # the counting-detector members (4D_EELS, 4D_Diff)
        cube = source.read_rows(0, source.shape[0])
        with pytest.raises(StempressError, match=f"counts up to {cube.max()} need {cube.max()} stempy frames"):
            write_stempy(source, tmp_path / "refused.h5")
        out = write_stempy(source, tmp_path / f"{source.name}.h5", frames_per_position=int(cube.max()))
        with StempySource(out) as back:
            np.testing.assert_array_equal(read_all(back), cube)
    assert listing(tmp_path) == ["4D_Diff.h5", "4D_EELS.h5"]  # nothing left of the refused writes


def test_real_stempy_reads_ours(tmp_path: Path, counted: np.ndarray) -> None:
    sparse_array = pytest.importorskip("stempy.io.sparse_array", reason="stempy is not installed here")
    for cube in (crafted(), counted):
        out = write_stempy(ArraySource(cube), tmp_path / "ev.h5", force=True)
        array = sparse_array.SparseArray.from_hdf5(str(out))
        np.testing.assert_array_equal(array.to_dense(), cube)


def test_stempy_source_reads_stempy_written_files(tmp_path: Path) -> None:
    """Files as stempy's write_to_hdf5 lays them out, here one frame per position with repeats inside an entry."""
    cube = crafted()
    path = tmp_path / "theirs.h5"
    with h5py.File(path, "w") as f:
        f.attrs["version"] = 3
        group = f.create_group("electron_events")
        positions = group.create_dataset("scan_positions", data=np.arange(27))
        positions.attrs["Nx"], positions.attrs["Ny"] = 3, 9
        frames = group.create_dataset("frames", (27,), dtype=h5py.vlen_dtype(np.uint32))
        frames.attrs["Nx"], frames.attrs["Ny"] = 5, 6
        rng = np.random.default_rng(1)
        for p, frame in enumerate(cube.reshape(27, 30)):
            frames[p] = rng.permutation(np.repeat(np.arange(30, dtype=np.uint32), frame))
        f.create_group("metadata")
    with StempySource(path) as source:
        assert source.dtype == np.uint32  # stempy's own default when the writer kept no dtype
        assert source.metadata["frames_per_position"] == 1
        np.testing.assert_array_equal(read_all(source, 4), cube)
    with StempySource(path, dtype="uint8") as source:
        assert source.dtype == np.uint8
        np.testing.assert_array_equal(source.read_rows(0, 9), cube)
    # stempy -> raw_csr goes event to event
    toml = write_raw_csr(StempySource(path, dtype="uint8"), tmp_path / "theirs.toml")
    with RawCsrSource(toml) as back:
        np.testing.assert_array_equal(read_all(back), cube)


def test_stempy_source_refuses_other_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = np.zeros((2, 2, 2, 2))
    with pytest.raises(StempressError, match="not a stempy electron-event file"):
        StempySource(plain)
    cut = tmp_path / "cut.h5"
    write_stempy(ArraySource(crafted()), cut)
    with h5py.File(cut, "a") as f:
        f["electron_events/scan_positions"].attrs["Ny"] = 4  # 12 positions: 135 frames do not divide
    with pytest.raises(StempressError, match="do not divide"):
        StempySource(cut)


def test_stempy_overwrite_and_failure_leave_no_partial_file(tmp_path: Path) -> None:
    cube = crafted()
    out = tmp_path / "ev.h5"
    out.write_bytes(b"mine")
    with pytest.raises(StempressError, match="already exists"):
        write_stempy(FailingSource(cube), out)  # refused before the counting pass reads anything
    assert out.read_bytes() == b"mine"
    write_stempy(ArraySource(cube), out, force=True)
    with StempySource(out) as source:
        np.testing.assert_array_equal(source.read_rows(0, 9), cube)
    # too few frames per position for the count of 5 in the last row: found after 8 rows were written
    with pytest.raises(StempressError, match="hold a count of 5 but frames_per_position is 3"):
        write_stempy(ArraySource(cube), tmp_path / "small.h5", rows=1, frames_per_position=3)
    with pytest.raises(OSError, match="disk gone"):
        write_stempy(FailingSource(cube), tmp_path / "crash.h5", rows=1, frames_per_position=5)
    assert listing(tmp_path) == ["ev.h5"]
    with pytest.raises(StempressError, match="float32 data are not electron counts"):
        write_stempy(ArraySource(cube.astype(np.float32)), tmp_path / "float.h5")
    assert listing(tmp_path) == ["ev.h5"]


def test_stempy_writes_events_without_a_dense_pass(tmp_path: Path, counted: np.ndarray) -> None:
    events = Events.from_source(ArraySource(counted), rows=5)
    out = write_stempy(events, tmp_path / "ev.h5", rows=3)
    with StempySource(out) as source:
        assert source.metadata["frames_per_position"] == counted.max()
        np.testing.assert_array_equal(read_all(source, 9), counted)


# ---------------------------------------------------------------- LiberTEM raw_csr


def test_raw_csr_sidecar_and_file_sizes(tmp_path: Path) -> None:
    cube = crafted("uint16")
    toml = write_raw_csr(ArraySource(cube), tmp_path / "scan.toml", rows=2)
    conf = tomllib.loads(toml.read_text())
    assert conf["params"] == {"filetype": "raw_csr", "nav_shape": [9, 3], "sig_shape": [5, 6]}
    files = raw_csr_files(toml)
    assert conf["raw_csr"] == {
        "indptr_file": "scan.indptr.bin", "indptr_dtype": "<i8",
        "indices_file": "scan.indices.bin", "indices_dtype": "<u4",
        "data_file": "scan.data.bin", "data_dtype": "<u2",
    }
    nnz = np.count_nonzero(cube)
    assert files["indptr"].stat().st_size == (27 + 1) * 8
    assert files["indices"].stat().st_size == nnz * 4
    assert files["data"].stat().st_size == nnz * 2
    # the three files are a plain CSR matrix: rows = scan positions, columns = flat pixels
    matrix = scipy.sparse.csr_matrix(
        (np.fromfile(files["data"], "<u2"), np.fromfile(files["indices"], "<u4"), np.fromfile(files["indptr"], "<i8")),
        shape=(27, 30))
    np.testing.assert_array_equal(matrix.toarray().reshape(cube.shape), cube)
    assert listing(tmp_path) == ["scan.data.bin", "scan.indices.bin", "scan.indptr.bin", "scan.toml"]


@pytest.mark.parametrize("rows", BLOCK_ROWS)
def test_raw_csr_round_trips(tmp_path: Path, counted: np.ndarray, merlin: np.ndarray, rows: int | None) -> None:
    cubes = {s.name: s.read_rows(0, s.shape[0]) for s in suite("smoke") if s.dtype.kind != "f"}
    cubes |= {"counted": counted, "merlin": merlin, "signed": crafted("int32"), "zeros": np.zeros((3, 2, 4, 4), "u1")}
    for name, cube in cubes.items():
        toml = write_raw_csr(ArraySource(cube), tmp_path / f"{name}.toml", rows=rows)
        with RawCsrSource(toml) as source:
            assert source.shape == cube.shape and source.dtype == cube.dtype, name
            np.testing.assert_array_equal(read_all(source, rows), cube)
    # no electrons at all: one unreferenced value, because an empty file cannot be memory-mapped
    assert raw_csr_files(tmp_path / "zeros.toml")["indices"].stat().st_size == 4


def test_real_libertem_reads_ours(tmp_path: Path, counted: np.ndarray) -> None:
    api = pytest.importorskip("libertem.api", reason="LiberTEM is not installed here")
    from libertem.udf.sum import SumUDF
    from libertem.udf.sumsigudf import SumSigUDF

    toml = write_raw_csr(ArraySource(counted), tmp_path / "counted.toml")
    ctx = api.Context.make_with("inline")
    dataset = ctx.load("raw_csr", path=str(toml))
    assert tuple(dataset.shape) == counted.shape
    np.testing.assert_array_equal(ctx.run_udf(dataset=dataset, udf=SumUDF())["intensity"].data, counted.sum((0, 1)))
    np.testing.assert_array_equal(ctx.run_udf(dataset=dataset, udf=SumSigUDF())["intensity"].data, counted.sum((2, 3)))


def test_raw_csr_source_reads_loose_foreign_sets(tmp_path: Path) -> None:
    """LiberTEM's own example dtypes, a section named by an upper-case filetype, big-endian counts,
    and rows whose pixels are unsorted and repeated (scipy sums repeats; so do we)."""
    cube = crafted("uint16", seed=4)
    flat = cube.reshape(27, 30)
    indptr, indices, data = [0], [], []
    for row in flat:
        pixels = np.flatnonzero(row)[::-1]  # descending
        for pixel in pixels:
            indices += [pixel, pixel]  # each count split in two halves
            data += [row[pixel] - row[pixel] // 2, row[pixel] // 2]
        indptr.append(len(indices))
    (tmp_path / "data").mkdir()
    np.asarray(indptr, "<i4").tofile(tmp_path / "data" / "rowind.dat")
    np.asarray(indices, "<i4").tofile(tmp_path / "data" / "coords.dat")
    np.asarray(data, ">u2").tofile(tmp_path / "data" / "values.dat")
    toml = tmp_path / "set.toml"
    toml.write_text('[params]\nfiletype = "RAW_CSR"\nnav_shape = [27]\nsig_shape = [5, 6]\n\n[RAW_CSR]\n'
                    'indptr_file = "data/rowind.dat"\nindptr_dtype = "<i4"\nindices_file = "data/coords.dat"\n'
                    'indices_dtype = "<i4"\ndata_file = "data/values.dat"\ndata_dtype = ">u2"\n')
    with pytest.raises(StempressError, match="must be 2-D"):
        RawCsrSource(toml)
    with RawCsrSource(toml, scan_shape=(9, 3)) as source:
        assert source.dtype == np.dtype("uint16") and source.shape == cube.shape
        np.testing.assert_array_equal(read_all(source, 4), cube)
        events = source.read_events(0, 9)
        assert events.n_events == np.count_nonzero(cube)  # repeats merged


def test_raw_csr_source_refuses_broken_sets(tmp_path: Path) -> None:
    toml = write_raw_csr(ArraySource(crafted()), tmp_path / "scan.toml")
    files = raw_csr_files(toml)
    text = toml.read_text()
    toml.write_text(text.replace('filetype = "raw_csr"', 'filetype = "raw"'))
    with pytest.raises(StempressError, match="not \"raw_csr\""):
        RawCsrSource(toml)
    toml.write_text(text.replace('data_dtype = "|u1"', 'data_dtype = "<f4"'))
    with pytest.raises(StempressError, match="integer counts only"):
        RawCsrSource(toml)
    toml.write_text(text.replace("indices_file", "indices_name"))
    with pytest.raises(StempressError, match="lacks indices_file"):
        RawCsrSource(toml)
    toml.write_text(text)
    files["indptr"].write_bytes(files["indptr"].read_bytes()[:-8])
    with pytest.raises(StempressError, match="indptr holds 27 offsets, 28 expected"):
        RawCsrSource(toml)
    files["indptr"].unlink()
    with pytest.raises(StempressError, match=r"indptr_file .* not found"):
        RawCsrSource(toml)
    toml.write_text("[params\n")
    with pytest.raises(StempressError, match="not a readable TOML file"):
        RawCsrSource(toml)


def test_raw_csr_overwrite_and_failure_leave_no_partial_set(tmp_path: Path) -> None:
    cube = crafted()
    files = raw_csr_files(tmp_path / "scan.toml")
    files["data"].write_bytes(b"mine")  # any one of the four is enough to refuse
    with pytest.raises(StempressError, match="already exists"):
        write_raw_csr(ArraySource(cube), tmp_path / "scan.toml")
    assert listing(tmp_path) == ["scan.data.bin"] and files["data"].read_bytes() == b"mine"
    toml = write_raw_csr(ArraySource(cube), tmp_path / "scan.toml", force=True)
    with RawCsrSource(toml) as source:
        np.testing.assert_array_equal(source.read_rows(0, 9), cube)
    before = {name: (tmp_path / name).read_bytes() for name in listing(tmp_path)}
    with pytest.raises(OSError, match="disk gone"):
        write_raw_csr(FailingSource(cube), tmp_path / "scan.toml", rows=1, force=True)
    assert {name: (tmp_path / name).read_bytes() for name in listing(tmp_path)} == before  # old set intact
    with pytest.raises(OSError, match="disk gone"):
        write_raw_csr(FailingSource(cube), tmp_path / "other.toml", rows=1)
    with pytest.raises(StempressError, match="negative value"):
        write_raw_csr(ArraySource(-crafted("int8")), tmp_path / "negative.toml", rows=1)
    with pytest.raises(StempressError, match=r"must be a \.toml file"):
        write_raw_csr(ArraySource(cube), tmp_path / "scan.csr")
    assert listing(tmp_path) == sorted(before)


def test_open_source_reads_both_event_layouts(tmp_path):
    cube = np.random.default_rng(5).poisson(0.2, (3, 4, 6, 5)).astype(np.uint16)
    write_stempy(ArraySource(cube), tmp_path / "ev.h5")
    write_raw_csr(ArraySource(cube), tmp_path / "ev.toml")
    for name in ("ev.h5", "ev.toml"):
        with open_source(tmp_path / name) as source:
            assert np.array_equal(source.read_rows(0, 3), cube), name


def test_raw_csr_writer_takes_blocks_in_row_order_and_publishes_only_whole_sets(tmp_path: Path) -> None:
    """The push writer the event sink stages into: blocks must continue the scan, a set covering part of the scan
    is refused at close, and an aborted set leaves no file."""
    from stempress.data.base import Block
    from stempress.data.events import events_from_block
    from stempress.events.libertem import RawCsrWriter

    cube = crafted()
    blocks = [events_from_block(Block(r, cube[r:r + 1])) for r in range(cube.shape[0])]
    with RawCsrWriter(tmp_path / "ev.toml", cube.shape, cube.dtype) as writer:
        writer.append(blocks[0])
        with pytest.raises(ValueError, match="does not continue row 1"):
            writer.append(blocks[2])
        for block in blocks[1:]:
            writer.append(block)
        assert list(tmp_path.glob("ev*")) == []  # nothing has its name before close
        writer.close()
    with RawCsrSource(tmp_path / "ev.toml") as back:
        np.testing.assert_array_equal(back.read_rows(0, cube.shape[0]), cube)
    with RawCsrWriter(tmp_path / "part.toml", cube.shape, cube.dtype) as writer:
        writer.append(blocks[0])
        with pytest.raises(StempressError, match="events for 1 of"):
            writer.close()
    writer = RawCsrWriter(tmp_path / "gone.toml", cube.shape, cube.dtype)
    writer.append(blocks[0])
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ev.toml", *(p.name for p in
                                                                 raw_csr_files(tmp_path / "ev.toml").values())])
