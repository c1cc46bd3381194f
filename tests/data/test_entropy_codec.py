"""The Poisson entropy code: bit-exact on counted, escaped and huge values; any row range alone; near its bound."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
import pytest

from real_data import real_file
from stempress.bench.bounds import poisson_entropy_bits
from stempress.data.base import Block, iter_blocks
from stempress.data.entropy import (
    STREAM_BLOCK_BYTES,
    EntropyCodedFormat,
    EntropyCodedSource,
    encode_blocks,
    fit_model,
    fit_source,
    header_crc,
    write_entropy_coded,
)
from stempress.data.entropy_coder import ChunkCoder
from stempress.data.entropy_model import GRIDS, pack_model, unpack_model
from stempress.data.entropy_parallel import ChunkPool
from stempress.data.open import open_source
from stempress.data.suites import suite
from stempress.errors import StempressError
from stempress.exec.processes import ProcessExecutor


class ArraySource:
    """A tiny in-memory Dataset4D."""

    def __init__(self, cube: np.ndarray, name: str = "cube"):
        self.cube, self.name, self.shape, self.dtype, self.metadata = cube, name, cube.shape, cube.dtype, {}

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.cube[start:stop]

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def counted() -> np.ndarray:
    src = suite("counted")[0]
    return src.read_rows(0, src.shape[0])


@pytest.fixture(scope="module")
def diff4d() -> np.ndarray:
    src = next(s for s in suite("smoke") if s.name == "4D_Diff")
    return src.read_rows(0, src.shape[0])


def _round_trip(cube: np.ndarray, path: Path, **kw: object) -> np.ndarray:
    write_entropy_coded(ArraySource(cube), path, **kw)
    with EntropyCodedSource(path) as src:
        assert src.shape == cube.shape and src.dtype == cube.dtype
        return src.read_rows(0, cube.shape[0])


def test_counted_suite_round_trips_and_beats_its_raw_size(counted: np.ndarray, tmp_path: Path) -> None:
    back = _round_trip(counted, tmp_path / "c.h5", chunk_rows=5)
    assert back.dtype == counted.dtype and np.array_equal(back, counted)
    assert counted.nbytes / (tmp_path / "c.h5").stat().st_size > 100  # ~99 % zeros: far beyond a byte per pixel


def test_smoke_4d_diff_with_escapes_round_trips(diff4d: np.ndarray, tmp_path: Path) -> None:
    assert diff4d.dtype == np.uint16 and diff4d.max() > 1000
    for fit in ("full", "first"):
        path = tmp_path / f"d_{fit}.h5"
        back = _round_trip(diff4d, path, chunk_rows=3, fit=fit)
        assert np.array_equal(back, diff4d)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int16, np.uint64])
def test_few_huge_values_are_escaped_exactly(dtype: type, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cube = rng.poisson(0.05, size=(6, 5, 12, 10)).astype(dtype)
    top = np.iinfo(dtype).max
    cube[0, 0, 0, 0] = top
    cube[5, 4, 11, 9] = top - 1
    cube[2, 3, 4, 5] = top // 3
    cube[3, 1] = 0  # an empty frame
    back = _round_trip(cube, tmp_path / "h.h5", chunk_rows=2)
    assert np.array_equal(back, cube)
    with EntropyCodedSource(tmp_path / "h.h5") as src:
        assert src._escapes.size >= 3


def test_any_row_range_decodes_alone(diff4d: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    write_entropy_coded(ArraySource(diff4d), path, chunk_rows=3)
    for start, stop in [(0, 1), (2, 4), (3, 6), (5, 8), (7, 8), (0, 8), (4, 4)]:
        with EntropyCodedSource(path) as src:  # a fresh reader: nothing cached from other ranges
            assert np.array_equal(src.read_rows(start, stop), diff4d[start:stop])
    with EntropyCodedSource(path) as src, pytest.raises(ValueError):
        src.read_rows(3, 9)


def test_chunks_are_independent_streams(diff4d: np.ndarray, tmp_path: Path) -> None:
    """Corrupting one chunk's words leaves the other chunks' rows intact."""
    import h5py

    path = tmp_path / "i.h5"
    write_entropy_coded(ArraySource(diff4d), path, chunk_rows=4)
    with h5py.File(path, "r+") as f:
        offsets = f["chunks/index"][:, 1]  # first word of each chunk
        words = f["chunks/words"]
        words[offsets[1]:offsets[2]] = 0x12345678
    with EntropyCodedSource(path) as src:
        assert np.array_equal(src.read_rows(0, 4), diff4d[0:4])


def test_floats_negatives_and_nan_are_refused(tmp_path: Path) -> None:
    ints = np.zeros((2, 2, 4, 4), np.int16)
    ints[1, 1, 2, 2] = -3
    with pytest.raises(StempressError, match="negative"):
        write_entropy_coded(ArraySource(ints), tmp_path / "n.h5")
    floats = np.zeros((2, 2, 4, 4), np.float32)
    with pytest.raises(StempressError, match="not electron counts"):
        write_entropy_coded(ArraySource(floats), tmp_path / "f.h5")
    floats[0, 0, 0, 0] = np.nan
    with pytest.raises(StempressError, match="float32 data are not"):  # refused from the dtype, before any read
        EntropyCodedFormat().write(tmp_path / "g.h5", [Block(0, floats)], floats.shape, floats.dtype)
    assert not any(tmp_path.iterdir())  # nothing half-written is left behind


def test_near_poisson_bound_on_cube_drawn_from_known_lambda(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 31.5, xx - 31.5) / 32
    lam = np.where(r < 0.4, 2.5, 0.02 + 0.3 * np.exp(-((r - 0.6) / 0.1) ** 2))  # disk, ring, weak background
    cube = rng.poisson(lam, size=(48, 48, 64, 64)).astype(np.uint8)
    path = tmp_path / "p.h5"
    assert np.array_equal(_round_trip(cube, path), cube)
    bound_bytes = cube.shape[0] * cube.shape[1] * float(np.sum(poisson_entropy_bits(lam))) / 8
    ratio_to_bound = bound_bytes / path.stat().st_size  # = our ratio / Poisson bound ratio
    assert 0.95 <= ratio_to_bound <= 1.01, ratio_to_bound
    with EntropyCodedSource(path) as src:  # the code's own (fitted, class-quantised) model sits near the truth
        own_bound_bytes = cube.shape[0] * cube.shape[1] * src.model.bound_bits() / 8
    assert own_bound_bytes / path.stat().st_size >= 0.95


def test_file_format_streams_blocks_and_checks_header(counted: np.ndarray, tmp_path: Path) -> None:
    fmt = EntropyCodedFormat(chunk_rows=4)
    src = ArraySource(counted)
    paths = fmt.write(tmp_path / "x.h5", iter_blocks(src, 7), counted.shape, counted.dtype)
    assert paths == [tmp_path / "x.h5"]
    blocks = list(fmt.read(paths[0], counted.shape, counted.dtype, rows=6))
    assert [b.start for b in blocks] == list(range(0, counted.shape[0], 6))
    assert np.array_equal(np.concatenate([b.data for b in blocks]), counted)
    with EntropyCodedSource(paths[0]) as source:  # the default blocks: whole chunks, within the stream budget
        rows = source.block_rows()
        assert rows % 4 == 0 or rows == counted.shape[0]
        assert rows == 4 or rows * counted[0].nbytes <= STREAM_BLOCK_BYTES
    default = list(fmt.read(paths[0], counted.shape, counted.dtype))
    assert {b.stop - b.start for b in default[:-1]} <= {rows}
    assert np.array_equal(np.concatenate([b.data for b in default]), counted)
    with pytest.raises(StempressError, match="give the shape"):
        list(fmt.read(paths[0], counted.shape, np.uint16))
    with pytest.raises(StempressError, match="continue cube"):  # a gap in the rows
        fmt.write(tmp_path / "y.h5", [Block(0, counted[:2]), Block(3, counted[3:])], counted.shape, counted.dtype)
    assert not (tmp_path / "y.h5").exists()


def test_model_from_first_block_keeps_unseen_pixels_codable(tmp_path: Path) -> None:
    """Pixels never hit in the fitting block still code (a smoothed lambda), so a one-pass write is lossless."""
    cube = np.zeros((4, 4, 8, 8), np.uint8)
    cube[2:, :, 5, 5] = 7
    model = fit_model(cube[:1].reshape(-1, 64).sum(axis=0), 4)
    assert np.all(model.class_lambda > 0)
    fmt = EntropyCodedFormat(chunk_rows=1)
    fmt.write(tmp_path / "u.h5", iter_blocks(ArraySource(cube), 1), cube.shape, cube.dtype)
    assert np.array_equal(next(fmt.read(tmp_path / "u.h5", cube.shape, cube.dtype, rows=4)).data, cube)


@pytest.mark.parametrize("name", ["001_4x2_6bit.mib", "002_4x2_6bit_roi128.mib"])
def test_real_merlin_files_round_trip_bit_exact(name: str, tmp_path: Path) -> None:
    with open_source(real_file(name), scan_shape=(2, 4)) as source:
        cube = source.read_rows(0, source.shape[0])
        write_entropy_coded(source, tmp_path / "m.h5", chunk_rows=1)
    with EntropyCodedSource(tmp_path / "m.h5") as back:
        assert back.dtype == cube.dtype and np.array_equal(back.read_rows(0, 2), cube)
    assert cube.nbytes / (tmp_path / "m.h5").stat().st_size > 1


def test_sparse_and_dense_classes_both_code_exactly_at_every_rate(tmp_path: Path) -> None:
    """Lambdas from 1e-6 to 50 span tiny gap-coded classes, the switch at SPARSE_BELOW, and bright tables."""
    from stempress.data.entropy_model import SPARSE_BELOW

    rng = np.random.default_rng(5)
    lam = np.geomspace(1e-6, 50, 40 * 30).reshape(40, 30)
    cube = rng.poisson(lam, size=(7, 9, 40, 30)).astype(np.uint16)
    path = tmp_path / "s.h5"
    assert np.array_equal(_round_trip(cube, path, chunk_rows=2), cube)
    with EntropyCodedSource(path) as src:
        sparse = src.model.sparse
        assert sparse.any() and not sparse.all()
        assert np.all(src.model.class_lambda[sparse] < SPARSE_BELOW)


def test_a_corrupt_event_count_is_named_not_decoded_into_garbage(counted: np.ndarray, tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "c.h5"
    write_entropy_coded(ArraySource(counted), path, chunk_rows=8)
    with h5py.File(path, "r+") as f:
        words = f["chunks/words"]
        words[:8] = np.uint32(0xFFFFFFFF)
    with EntropyCodedSource(path) as src, pytest.raises(StempressError, match="corrupt"):
        src.read_rows(0, 8)


def test_escaped_gaps_and_counts_of_dark_pixels_decode_and_a_bad_escape_is_named() -> None:
    """A dark class whose data strays far from its model: one event after a gap beyond the gap table and a count
    beyond the count table both go through the escapes; an escaped gap that would leave its class is refused."""
    model = fit_model(np.full(1000, 0.1 * 64), 64)  # lambda 0.1 everywhere: one dark (event-coded) class
    assert model.sparse.all()
    coder = ChunkCoder(model)
    frames = np.zeros((64, 1000), np.uint16)
    frames[63, 999] = 200  # the last key of the class: a gap of ~64000 and a count far outside the window
    frames[0, 3] = 1
    words, escapes = coder.encode(frames)
    assert escapes.size >= 2
    assert np.array_equal(coder.decode(words, escapes, 64, frames.dtype), frames)
    # in decoding order: the class's event count, the two gap quotients, the count of 200
    assert escapes.size == 4 and escapes[3] == 200
    huge = escapes.copy()
    huge[2] = 10**12  # the second gap now points far outside the class
    with pytest.raises(StempressError, match="outside its class"):
        coder.decode(words, huge, 64, frames.dtype)
    with pytest.raises(StempressError, match="fewer escaped values"):
        coder.decode(words, escapes[:-1], 64, frames.dtype)


# --- several worker processes -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_procs() -> Iterator[ProcessExecutor]:
    """Two worker processes, shared by the module's tests as a long-lived caller shares its executor."""
    with ProcessExecutor(2) as executor:
        yield executor


def _in_workers_only(m: pytest.MonkeyPatch) -> None:
    """The calling process's coder refuses to work, so whatever succeeds was coded by the worker processes (they
    import their own copy of the module, which monkeypatch does not reach)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("coded in the calling process, not in a worker")

    m.setattr(ChunkCoder, "encode", refuse)
    m.setattr(ChunkCoder, "decode", refuse)


def _arena_names(m: pytest.MonkeyPatch) -> list[str]:
    """The shared-memory names of the arenas the pools open from now on."""
    names: list[str] = []
    real = ChunkPool.open.__func__  # type: ignore[attr-defined]

    def spy(cls: type[ChunkPool], *args: Any) -> ChunkPool | None:
        pool = real(cls, *args)
        if pool is not None:
            names.append(pool.arena.shm.name)
        return pool

    m.setattr(ChunkPool, "open", classmethod(spy))
    return names


def _shm_exists(name: str) -> bool:
    return (Path("/dev/shm") / name).exists()


def _contents(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        out: dict[str, Any] = {k: f[k][...] for k in ("chunks/words", "chunks/escapes", "chunks/index",
                                                      "model/packed")}
        out["attrs"] = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}
    return out


def _same_file(a: Path, b: Path) -> None:
    ca, cb = _contents(a), _contents(b)
    assert ca["attrs"] == cb["attrs"]
    for key in ca:
        assert np.array_equal(ca[key], cb[key]), key
    assert a.read_bytes() == b.read_bytes()  # HDF5 writes no time stamps here: the files match byte for byte


def test_two_workers_write_the_same_file_as_one_process(counted: np.ndarray, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        two_procs: ProcessExecutor) -> None:
    one = write_entropy_coded(ArraySource(counted), tmp_path / "one.h5", chunk_rows=3)
    with monkeypatch.context() as m:
        _in_workers_only(m)
        two = write_entropy_coded(ArraySource(counted), tmp_path / "two.h5", chunk_rows=3, executor=two_procs)
    with h5py.File(two, "r") as f:
        assert f["chunks/index"].shape[0] - 1 == 11  # 32 rows in chunks of 3: the workers had many to share
    _same_file(one, two)


def test_two_workers_read_any_row_range_and_one_chunk_stays_in_process(counted: np.ndarray, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       two_procs: ProcessExecutor) -> None:
    path = write_entropy_coded(ArraySource(counted), tmp_path / "r.h5", chunk_rows=3)
    with EntropyCodedSource(path, executor=two_procs) as src:
        with monkeypatch.context() as m:
            _in_workers_only(m)
            assert np.array_equal(src.read_rows(0, 32), counted)
            assert np.array_equal(src.read_rows(1, 8), counted[1:8])  # chunks cut at both ends
            assert np.array_equal(src.read_rows(7, 14), counted[7:14])  # rows 6-8 from the cache, 2 chunks decoded
        with monkeypatch.context() as m:
            m.setattr(ChunkPool, "open", classmethod(lambda *args: pytest.fail("a pool for one chunk")))
            assert np.array_equal(src.read_rows(15, 17), counted[15:17])


@pytest.mark.parametrize("checksums", [True, False], ids=["crc", "version-2"])
def test_a_corrupt_chunk_read_by_workers_raises_the_same_one_line_error(counted: np.ndarray, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        checksums: bool,
                                                                        two_procs: ProcessExecutor) -> None:
    """With checksums the caller finds the bad chunk before a worker decodes it; in a file without them (version
    2) the worker's decoder does, and its error comes back the same."""
    path = write_entropy_coded(ArraySource(counted), tmp_path / "c.h5", chunk_rows=8)
    with h5py.File(path, "r+") as f:
        f["chunks/words"][:8] = np.uint32(0xFFFFFFFF)
    if not checksums:
        _as_version_2(path)
    with EntropyCodedSource(path) as src, pytest.raises(StempressError) as one:
        src.read_rows(0, 16)
    with EntropyCodedSource(path, executor=two_procs) as src, monkeypatch.context() as m:
        _in_workers_only(m)
        names = _arena_names(m)
        with pytest.raises(StempressError) as two:
            src.read_rows(0, 16)
        assert str(two.value) == str(one.value) and "corrupt" in str(two.value) and "\n" not in str(two.value)
        assert names
        if not checksums:  # raised in a worker: no remote traceback attached, its shared memory gone
            assert two.value.__cause__ is None and two.value.__suppress_context__
            assert not _shm_exists(names[0])
        assert np.array_equal(src.read_rows(8, 24), counted[8:24])  # the pool still serves the intact chunks


def test_ctrl_c_during_a_parallel_write_leaves_no_file_and_no_shared_memory(counted: np.ndarray, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            two_procs: ProcessExecutor) -> None:
    def interrupted() -> Iterator[Block]:
        yield from list(iter_blocks(ArraySource(counted), 4))[:2]  # 4 chunks of 2 rows: all four slots in flight
        raise KeyboardInterrupt

    fmt = EntropyCodedFormat(chunk_rows=2, executor=two_procs)
    with monkeypatch.context() as m:
        names = _arena_names(m)
        with pytest.raises(KeyboardInterrupt):
            fmt.write(tmp_path / "k.h5", interrupted(), counted.shape, counted.dtype)
    assert names and not _shm_exists(names[0])
    assert not any(tmp_path.iterdir())
    assert two_procs.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN  # Ctrl-C is the caller's
    again = fmt.write(tmp_path / "k.h5", iter_blocks(ArraySource(counted), 4), counted.shape, counted.dtype)[0]
    one = EntropyCodedFormat(chunk_rows=2).write(tmp_path / "one.h5", iter_blocks(ArraySource(counted), 4),
                                                 counted.shape, counted.dtype)[0]
    _same_file(one, again)


def test_file_format_with_workers_writes_and_reads_like_one_process(counted: np.ndarray, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    two_procs: ProcessExecutor) -> None:
    one = EntropyCodedFormat(chunk_rows=4).write(tmp_path / "one.h5", iter_blocks(ArraySource(counted), 7),
                                                 counted.shape, counted.dtype)[0]
    fmt = EntropyCodedFormat(chunk_rows=4, executor=two_procs)
    with monkeypatch.context() as m:
        _in_workers_only(m)
        two = fmt.write(tmp_path / "two.h5", iter_blocks(ArraySource(counted), 7), counted.shape, counted.dtype)[0]
        for rows in (10, None):  # blocks across chunk edges (the cache carries the rest), and the format's own
            blocks = list(fmt.read(two, counted.shape, counted.dtype, rows=rows))
            assert np.array_equal(np.concatenate([b.data for b in blocks]), counted)
    _same_file(one, two)
    with pytest.raises(StempressError, match="workers must be at least 1"):
        ProcessExecutor(0)


def test_a_dead_worker_is_a_one_line_error_then_replaced_and_close_leaves_no_worker(counted: np.ndarray,
                                                                                    tmp_path: Path) -> None:
    path = write_entropy_coded(ArraySource(counted), tmp_path / "d.h5", chunk_rows=3)
    executor = ProcessExecutor(2)
    with EntropyCodedSource(path, executor=executor) as src, pytest.raises(StempressError) as died:
        for _ in range(20):
            killer = executor.submit(os._exit, 1)  # a worker dies while the read's chunks are queued
            src.read_rows(0, 32)
    assert "worker process died" in str(died.value) and "\n" not in str(died.value)
    with pytest.raises(BrokenProcessPool):
        killer.result()
    written = write_entropy_coded(ArraySource(counted), tmp_path / "again.h5", chunk_rows=3, executor=executor)
    assert written.read_bytes() == write_entropy_coded(ArraySource(counted), tmp_path / "one.h5",
                                                       chunk_rows=3).read_bytes()
    with EntropyCodedSource(written, executor=executor) as src:
        assert np.array_equal(src.read_rows(0, 32), counted)
    pids = executor.pids()
    assert pids
    executor.close()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(pid) for pid in pids)  # exited and reaped: no zombie left


# --- checksums (format version 3) ---------------------------------------------------------------------------------

def _as_version_3(path: Path) -> None:
    """Make a file what stempress wrote before the packed model (version 4): one dataset per model array, float64
    class numbers, gzip'd, the CRC over them."""
    from stempress.data.entropy import CLASS_FLOAT, CLASS_INT, header_crc

    with h5py.File(path, "r+") as f:
        det = tuple(int(v) for v in f.attrs["shape"][2:])
        model = unpack_model(f["model/packed"][...], det)
        del f["model/packed"]
        m, small = f["model"], {"compression": "gzip", "shuffle": True}
        m.create_dataset("class_of_pixel", data=model.class_of_pixel.reshape(det).astype(np.uint8), **small)
        m.create_dataset("class_int", data=np.stack([getattr(model, k).astype(np.int64) for k in CLASS_INT], 1),
                         **small)
        m.create_dataset("class_float", data=np.stack([getattr(model, k) for k in CLASS_FLOAT], 1), **small)
        m.create_dataset("table_offsets", data=model.table_offsets, **small)
        m.create_dataset("tables", data=model.tables.astype(np.float16), **small)
        for key in ("format", "dtype", "checksum_algorithm"):  # variable-length strings, as h5py writes a str
            f.attrs[key] = f.attrs[key].decode()
        f.attrs["version"] = 3
        f.attrs["model_crc"] = header_crc(f, "crc32c")


def _as_version_2(path: Path) -> None:
    """Make a file what stempress wrote before checksums: version 2, no CRCs (the layout is otherwise version 3's)."""
    _as_version_3(path)
    with h5py.File(path, "r+") as f:
        del f["chunks/crc"]
        for key in ("checksum_algorithm", "model_crc"):
            del f.attrs[key]
        f.attrs["version"] = 2


def test_a_flipped_byte_in_a_chunk_is_a_one_line_error_naming_chunk_and_rows(counted: np.ndarray,
                                                                            tmp_path: Path) -> None:
    from stempress.data.entropy_file import has_checksums
    from stempress.events import ChecksumError

    path = write_entropy_coded(ArraySource(counted), tmp_path / "c.h5", chunk_rows=8)
    assert has_checksums(path)
    with h5py.File(path, "r") as f:
        index, words = f["chunks/index"][...], f["chunks/words"]
        at = words.id.get_offset() + 4 * int(index[2, 1] + 5)  # a word of chunk 2 (scan rows 16-23)
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)[0]
        fh.seek(at)
        fh.write(bytes([byte ^ 0x04]))
    with EntropyCodedSource(path) as src:
        assert np.array_equal(src.read_rows(0, 16), counted[:16])  # the chunks before it are intact and read
        with pytest.raises(ChecksumError) as caught:
            src.read_rows(10, 20)
    message = str(caught.value)
    assert "\n" not in message and "chunk 2 (scan rows 16-23)" in message and "write it again" in message
    assert caught.value.chunk == 2 and caught.value.positions == (16 * 32, 24 * 32)


def test_a_corrupt_model_is_refused_on_open(counted: np.ndarray, tmp_path: Path) -> None:
    path = write_entropy_coded(ArraySource(counted), tmp_path / "c.h5")
    with h5py.File(path, "r+") as f:
        packed = f["model/packed"]
        values = packed[...]
        values[len(values) // 2] ^= 0x10
        packed[...] = values
    with pytest.raises(StempressError, match="model or chunk index fails its crc32c"):
        EntropyCodedSource(path)
    with h5py.File(path, "r+") as f:  # the same damage with its CRC made to match: the model does not unpack
        f.attrs["model_crc"] = header_crc(f, "crc32c")
    with pytest.raises(StempressError, match="model is unreadable") as caught:
        EntropyCodedSource(path)
    assert "\n" not in str(caught.value)


def test_a_version_3_file_reads_bit_exact(counted: np.ndarray, tmp_path: Path) -> None:
    path = write_entropy_coded(ArraySource(counted), tmp_path / "v3.h5", chunk_rows=8)
    _as_version_3(path)
    with h5py.File(path, "r") as f:
        assert int(f.attrs["version"]) == 3 and "packed" not in f["model"] and isinstance(f.attrs["format"], str)
    with EntropyCodedSource(path) as src:
        assert np.array_equal(src.read_rows(0, counted.shape[0]), counted) and src.checksum_algorithm == "crc32c"
        assert src.chunks_checked == 4


def test_the_packed_model_round_trips_and_a_small_cube_gets_a_coarse_grid() -> None:
    """A short scan cannot pay for a fine class grid's bigger map; a long one gains from it."""
    rng = np.random.default_rng(3)
    lam = np.exp(rng.uniform(np.log(1e-4), np.log(30.0), size=(40, 50)))
    short = fit_model(lam.reshape(-1) * 16, 16)
    long = fit_model(lam.reshape(-1) * 100_000, 100_000)
    assert short.grid == GRIDS[0] and long.grid is not None and GRIDS.index(long.grid) > 1
    # fitted on a cube's first 16 frames but coding all of them: the grid is chosen for the whole cube
    first = fit_model(lam.reshape(-1) * 16, 16, coded_positions=100_000)
    assert first.grid is not None and GRIDS.index(first.grid) > 0
    back = unpack_model(pack_model(long, (40, 50)), (40, 50))
    for key in ("class_of_pixel", "class_lambda", "p_event", "sparse", "lo", "golomb_bits", "low_bits",
                "first_table", "table_offsets", "tables"):
        assert np.array_equal(getattr(back, key), getattr(long, key)), key
    with pytest.raises(ValueError, match="does not decompress"):
        unpack_model(np.zeros(40, np.uint8), (40, 50))


def test_a_file_written_before_checksums_still_reads_and_says_it_has_none(counted: np.ndarray,
                                                                         tmp_path: Path) -> None:
    from stempress.data.entropy_file import has_checksums
    from stempress.store import verify

    path = write_entropy_coded(ArraySource(counted), tmp_path / "old.h5", chunk_rows=8)
    _as_version_2(path)
    assert not has_checksums(path)
    with EntropyCodedSource(path) as src:
        assert np.array_equal(src.read_rows(0, counted.shape[0]), counted) and src.checksum_algorithm is None
    report = verify(path)
    assert report.ok and not report.verified
    with h5py.File(path, "r+") as f:  # a version 3 file that lost its checksums is damaged, not old
        f.attrs["version"] = 3
    with pytest.raises(StempressError, match="checksums are missing"):
        EntropyCodedSource(path)
    with h5py.File(path, "r+") as f:
        f.attrs["version"] = 2
    assert report.summary().endswith("no stored checksums (written before entropy files had them): "
                                     "decoded, not verified (no checksums; pass --against)")


def test_verify_says_every_chunk_of_an_entropy_file_was_checked(counted: np.ndarray, tmp_path: Path) -> None:
    from stempress.store import verify

    path = write_entropy_coded(ArraySource(counted), tmp_path / "c.h5", chunk_rows=8)
    report = verify(path)
    assert report.ok and report.verified and report.checksums
    assert "stored crc32c of 4/4 coded chunks" in report.summary() and report.summary().endswith(": OK")


#: Strong scan contrast: thickness (bright-field vs scattered share) varying 0.1-1.9 mean free paths over the scan,
#: eight grains, each with its own Bragg disks.
SCAN_VARYING = "synthetic:counted/counted?dose=4000&thickness=1.0&thickness_var=0.9&grains=8"


def test_a_scan_varying_cube_codes_within_5_percent_of_its_true_poisson_bound(tmp_path: Path) -> None:
    from stempress.bench.bounds import true_poisson_bound
    from stempress.data.suites import open_synthetic

    source = open_synthetic(SCAN_VARYING)
    cube = source.read_rows(0, source.shape[0])
    path = write_entropy_coded(ArraySource(cube), tmp_path / "c.h5")
    with EntropyCodedSource(path) as src:
        assert np.array_equal(src.read_rows(0, cube.shape[0]), cube)
    ratio = cube.nbytes / path.stat().st_size
    true_bound = true_poisson_bound([source.expected_rows(0, source.shape[0])], 8, cube.size)
    assert ratio >= 0.95 * true_bound, f"{ratio / true_bound:.1%} of the true bound"



def test_threads_or_one_worker_code_in_this_process(counted: np.ndarray, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads gain nothing on a coder that holds the GIL: only worker processes get chunks."""
    from stempress.exec import InlineExecutor, ThreadExecutor

    one = write_entropy_coded(ArraySource(counted), tmp_path / "one.h5", chunk_rows=3)
    monkeypatch.setattr(ChunkPool, "open", classmethod(lambda *args: pytest.fail("chunks sent to workers")))
    for executor in (ThreadExecutor(2), InlineExecutor(), ProcessExecutor(1)):
        with executor:
            path = write_entropy_coded(ArraySource(counted), tmp_path / "x.h5", chunk_rows=3, executor=executor,
                                       force=True)
            with EntropyCodedSource(path, executor=executor) as src:
                assert np.array_equal(src.read_rows(0, 32), counted)
        _same_file(one, path)


def test_the_file_does_not_depend_on_how_the_caller_cuts_the_cube(counted: np.ndarray, tmp_path: Path) -> None:
    """Chunks start at multiples of chunk_rows whatever the blocks, so --rows or a memory budget never changes
    the file."""
    source = ArraySource(counted[:10])
    model = fit_source(source, 10)
    stored = []
    for rows in (10, 1, 2, 4):
        path = tmp_path / f"rows{rows}.h5"
        encode_blocks(path, iter_blocks(source, rows), source.shape, source.dtype, model=model, chunk_rows=3)
        with h5py.File(path, "r") as f:
            stored.append({name: f["chunks"][name][()] for name in f["chunks"]})
            assert list(f["chunks/index"][:, 0]) == [0, 3, 6, 9, 10]
    for other in stored[1:]:
        assert other.keys() == stored[0].keys()
        assert all(np.array_equal(other[k], stored[0][k]) for k in other)
