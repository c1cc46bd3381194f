"""Parallel direct-chunk writing and reading: standard files, deterministic, bounded, corruption found."""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from stempress.codecs.catalog import CATALOG
from stempress.codecs.chunk_codec import chunk_codec_for, direct_chunk_reason
from stempress.codecs.parallel import ChunkEncoder, block_data, read_chunks_parallel, read_parallel_cube_blocks
from stempress.data.base import ArraySource, Block, iter_blocks
from stempress.data.checksums import (
    ALGORITHM,
    NOGIL_CRC_BYTES,
    ChunkChecksums,
    _crc32c_nogil,
    checksum_function,
    checksum_group_path,
    verify_stored,
)
from stempress.data.stream import BlockStream
from stempress.errors import StempressError
from stempress.sinks.archive import ArchiveResult, ArchiveSpec
from stempress.store.write import write_archive

DIRECT = [c.name for c in CATALOG.values() if c.storage == "hdf5" and c.available and direct_chunk_reason(c) is None]
DTYPES = ["uint8", "uint16", "uint32", "float32"]
SHAPE = (7, 6, 20, 24)
CHUNKS = (2, 4, 8, 16)  # edge chunks on every axis
DSET = "/version_1/data/datacubes/datacube_000/data"


def make_cube(dtype: str, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        cube = (rng.poisson(0.4, size=shape) / 4).astype(np.float32)
        cube.flat[:3] = [np.nan, 1035.5, 1e-7]
        return cube
    cube = rng.poisson(0.3, size=shape).astype(dtype)
    cube.flat[-1] = np.iinfo(dtype).max
    return cube


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}")


def blocks_of(cube: np.ndarray, rows: int = 4):
    return iter_blocks(ArraySource(cube), rows)


def write_parallel_cube(path, blocks, shape, dtype, chunks, codec, workers, dataset_path=DSET, *, checksums=False,
                        progress=None) -> ArchiveResult:
    """The archive sink writing a bare cube at ``dataset_path``, as the benchmark's parallel path does."""
    spec = ArchiveSpec(path, codec, tuple(chunks), layout="plain", dataset_path=dataset_path, checksums=checksums,
                       provenance=False)
    return write_archive(BlockStream(blocks, shape, dtype), spec, workers=workers, progress=progress)


def read_all(blocks) -> np.ndarray:
    parts, expected = [], 0
    for block in blocks:
        assert block.start == expected, "blocks out of order"
        parts.append(block.data)
        expected = block.stop
    return np.concatenate(parts)


def stored_chunks(path: Path) -> dict[tuple[int, ...], tuple[int, bytes]]:
    with h5py.File(path, "r") as f:
        dset = f[DSET]
        return {info.chunk_offset: dset.id.read_direct_chunk(info.chunk_offset)
                for info in (dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks()))}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DIRECT)
def test_parallel_cube_roundtrips_through_h5py_and_our_reader(name: str, dtype: str, tmp_path: Path) -> None:
    codec = CATALOG[name]
    cube = make_cube(dtype)
    path = tmp_path / "cube.h5"
    outcome = write_parallel_cube(path, blocks_of(cube), SHAPE, cube.dtype, CHUNKS, codec, workers=2)
    assert outcome.direct and outcome.fallback_reason is None
    with h5py.File(path, "r") as f:  # a plain reader: the declared filter decodes our chunks
        np.testing.assert_array_equal(bits(f[DSET][...]), bits(cube))
    for rows in (2, 3):  # aligned with the chunk rows, and not
        back = read_all(read_parallel_cube_blocks(path, rows, codec, workers=2))
        np.testing.assert_array_equal(bits(back), bits(cube))


@pytest.mark.parametrize("name", ["gzip_6", "blosc_zstd_bitshuffle", "blosc2_zstd", "lz4_hdf5", "bitshuffle_lz4"])
def test_worker_count_does_not_change_the_file(name: str, tmp_path: Path) -> None:
    if name not in DIRECT:
        pytest.skip(direct_chunk_reason(CATALOG[name]))
    cube = make_cube("uint16")
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    write_parallel_cube(one, blocks_of(cube), SHAPE, cube.dtype, CHUNKS, CATALOG[name], workers=1)
    write_parallel_cube(two, blocks_of(cube, rows=2), SHAPE, cube.dtype, CHUNKS, CATALOG[name], workers=2)
    assert stored_chunks(one) == stored_chunks(two)
    assert one.read_bytes() == two.read_bytes()  # same chunks in the same order at the same addresses


def test_filter_written_file_reads_in_parallel(tmp_path: Path) -> None:
    """Incompressible chunks: the optional Blosc filter gives up and HDF5 stores them raw with filter mask 1."""
    codec = CATALOG["blosc_lz4"]
    cube = make_cube("uint16")
    cube[2:4] = np.random.default_rng(3).integers(0, 2**16, size=cube[2:4].shape, dtype=np.uint16)
    path = tmp_path / "filter.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(DSET, data=cube, chunks=CHUNKS, **codec.h5_kwargs())
    masks = {mask for mask, _ in stored_chunks(path).values()}
    assert masks == {0, 1}
    back = read_all(read_parallel_cube_blocks(path, 4, codec, workers=2))
    np.testing.assert_array_equal(back, cube)


def test_partly_filtered_chunk_is_refused_naming_its_scan_position(tmp_path: Path) -> None:
    """Shuffle then the optional Blosc filter: on incompressible rows Blosc is skipped but the shuffle is not
    (mask 0b10), which no chunk codec decodes. (write_direct_chunk cannot make such chunks: h5py 3.16 with
    HDF5 2.0 stores mask 0 whatever filter_mask it is given.)"""
    cube = make_cube("uint16")
    cube[4:6, :4] = np.random.default_rng(3).integers(0, 2**16, size=cube[4:6, :4].shape, dtype=np.uint16)
    with h5py.File(tmp_path / "mask.h5", "w") as f:
        dset = f.create_dataset("d", data=cube, chunks=CHUNKS, shuffle=True, **hdf5plugin.Blosc("lz4", 5, 0))
        assert dset.id.read_direct_chunk((4, 0, 0, 0))[0] == 0b10
        codec = chunk_codec_for(CATALOG["blosc_lz4"], cube.dtype)
        with pytest.raises(StempressError, match=r"scan rows 4-5, columns 0-3 \(chunk \(2, 0, 0, 0\)\)") as err:
            read_all(read_chunks_parallel(dset, codec, workers=2, rows=2))
    assert "filter mask 0x2" in str(err.value)


def flip_byte_in_chunk(path: Path, chunk_offset: tuple[int, ...]) -> None:
    with h5py.File(path, "r") as f:
        info = f[DSET].id.get_chunk_info_by_coord(chunk_offset)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 2)
        byte = raw.read(1)
        raw.seek(-1, 1)
        raw.write(bytes([byte[0] ^ 0x5A]))


@pytest.mark.parametrize("name", ["gzip_6", "zstd_3", "blosc_lz4"])
def test_corrupted_chunk_is_found_by_checksums_and_by_the_reader(name: str, tmp_path: Path) -> None:
    codec = CATALOG[name]
    cube = make_cube("uint16")
    path = tmp_path / "c.h5"
    outcome = write_parallel_cube(path, blocks_of(cube), SHAPE, cube.dtype, CHUNKS, codec, workers=2,
                                  checksums=True)
    assert outcome.checksums_saved
    with h5py.File(path, "r") as f:
        assert verify_stored(f, DSET) == []
    flip_byte_in_chunk(path, (2, 4, 8, 0))
    with h5py.File(path, "r") as f:
        assert verify_stored(f, DSET) == [(1, 1, 1, 0)]
    with pytest.raises(StempressError, match=r"scan rows 2-3, columns 4-5 \(chunk \(1, 1, 1, 0\)\)"):
        read_all(read_parallel_cube_blocks(path, 4, codec, workers=2, verify_checksums=True))


def test_corrupted_deflate_chunk_fails_to_decode_without_checksums(tmp_path: Path) -> None:
    codec = CATALOG["gzip_6"]  # zlib's own adler32 catches the flip
    cube = make_cube("uint16")
    path = tmp_path / "c.h5"
    write_parallel_cube(path, blocks_of(cube), SHAPE, cube.dtype, CHUNKS, codec, workers=2)
    flip_byte_in_chunk(path, (6, 0, 16, 16))
    with pytest.raises(StempressError, match=r"scan rows 6-6, columns 0-3"):
        read_all(read_parallel_cube_blocks(path, 4, codec, workers=2))


def test_checksums_record_stored_and_raw_bytes(tmp_path: Path) -> None:
    codec = CATALOG["zstd_3"]
    cube = make_cube("uint16")
    path = tmp_path / "c.h5"
    write_parallel_cube(path, blocks_of(cube), SHAPE, cube.dtype, CHUNKS, codec, workers=2, checksums=True)
    with h5py.File(path, "r") as f:
        group = f[checksum_group_path(DSET)]
        assert group.attrs["algorithm"] == ALGORITHM
        assert tuple(group.attrs["chunk_shape"]) == CHUNKS
        assert group.attrs["stored_crc"].shape == group.attrs["raw_crc"].shape == (4, 2, 3, 2)
        assert group.attrs["stored_crc"].dtype == np.uint32
        assert list(group) == []  # attributes, not datasets: no reader lists them as data
        record = ChunkChecksums.load(f, DSET)
        dset = f[DSET]
        _, stored = dset.id.read_direct_chunk((6, 4, 16, 16))  # the corner edge chunk
        raw = chunk_codec_for(codec, cube.dtype).decode(stored, CHUNKS, cube.dtype)
        assert record.check_chunk((3, 1, 2, 1), stored=stored, raw=raw) is None
        assert "stored bytes" in record.check_chunk((3, 1, 2, 1), stored=stored[:-1] + b"\0")
        assert "decoded data" in record.check_chunk((3, 1, 2, 1), raw=np.zeros_like(raw))
        assert ChunkChecksums.load(f, "/no/such/dataset") is None
        assert list(f) == ["stempress", "version_1"]  # the cube's own tree is untouched


def test_large_chunks_get_the_same_crc32c_outside_the_gil() -> None:
    """Chunks from NOGIL_CRC_BYTES on go to libcrc32c through ctypes (GIL released): the value must be
    google-crc32c's for the same bytes, for a numpy chunk, a strided one (copied first) and a memoryview."""
    google_crc32c = pytest.importorskip("google_crc32c")
    crc = checksum_function("crc32c")
    chunk = np.random.default_rng(1).integers(0, 4096, (4, 8, 64, 128), dtype=np.uint16)
    assert chunk.nbytes >= 2 * NOGIL_CRC_BYTES
    expected = google_crc32c.value(chunk.tobytes())
    assert crc(chunk) == expected == crc(memoryview(chunk.tobytes())) == crc(chunk.view(np.uint8).reshape(-1))
    assert crc(chunk[:, ::2]) == google_crc32c.value(chunk[:, ::2].tobytes()) != expected
    nogil = _crc32c_nogil(google_crc32c._crc32c.__file__)  # the ctypes call itself, where the symbol is found
    assert nogil is None or nogil(chunk.ctypes.data, chunk.nbytes) == expected


def test_checksums_refuse_to_save_a_partial_record(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "p.h5", "w") as f:
        dset = f.create_dataset("d", shape=(4, 4), dtype="u1", chunks=(2, 2))
        record = ChunkChecksums.for_dataset(dset)
        record.add((0, 0), b"abc", np.zeros((2, 2), np.uint8))
        with pytest.raises(StempressError, match="miss 3 of 4"):
            record.save(f)



def test_checksums_of_a_large_grid_fit_in_attributes(tmp_path: Path) -> None:
    """A 256 x 256 scan in single-frame chunks: 65536 chunks, 256 KiB per CRC array, beyond HDF5's 64 KiB limit
    for attributes stored in an object header of version 1."""
    with h5py.File(tmp_path / "g.h5", "w") as f:
        dset = f.create_dataset("d", shape=(256, 256, 2, 2), dtype="u1", chunks=(1, 1, 2, 2))
        record = ChunkChecksums.for_dataset(dset)
        values = np.arange(record.stored.size, dtype=np.uint32).reshape(record.grid_shape)
        for index in np.ndindex(*record.grid_shape):
            record.add_values(index, int(values[index]), int(values[index]) ^ 1)
        record.save(f)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        back = ChunkChecksums.load(f, "/d")
    np.testing.assert_array_equal(back.stored, values)
    np.testing.assert_array_equal(back.raw, values ^ 1)

def test_a_row_range_on_chunk_rows_is_decoded_alone_in_blocks_from_its_start(tmp_path: Path) -> None:
    """What a remote verify partition reads: rows [start, stop) only, blocks cut from start."""
    codec = chunk_codec_for(CATALOG["gzip_1"], np.dtype("uint16"))
    cube = np.arange(7 * 3 * 4 * 4, dtype=np.uint16).reshape(7, 3, 4, 4)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        dset = f.create_dataset("d", data=cube, chunks=(2, 2, 4, 4), **CATALOG["gzip_1"].h5_kwargs())
        blocks = list(read_chunks_parallel(dset, codec, workers=2, rows=4, start=2, stop=7))
        assert [(b.start, b.stop) for b in blocks] == [(2, 6), (6, 7)]
        np.testing.assert_array_equal(np.concatenate([b.data for b in blocks]), cube[2:7])
        with pytest.raises(ValueError, match="chunk rows"):
            list(read_chunks_parallel(dset, codec, workers=1, rows=2, start=1, stop=4))


def test_unwritten_chunks_read_as_the_fill_value(tmp_path: Path) -> None:
    codec = chunk_codec_for(CATALOG["gzip_1"], np.dtype("uint16"))
    with h5py.File(tmp_path / "f.h5", "w") as f:
        dset = f.create_dataset("d", shape=(4, 4, 8, 8), dtype="u2", chunks=(2, 2, 8, 8), fillvalue=7,
                                **CATALOG["gzip_1"].h5_kwargs())
        cube = np.arange(2 * 4 * 8 * 8, dtype=np.uint16).reshape(2, 4, 8, 8)
        dset[:2] = cube
        back = read_all(read_chunks_parallel(dset, codec, workers=2, rows=3))
    np.testing.assert_array_equal(back[:2], cube)
    assert (back[2:] == 7).all()


def test_edge_chunks_are_padded_with_the_fill_value(tmp_path: Path) -> None:
    codec = chunk_codec_for(CATALOG["gzip_1"], np.dtype("uint16"))
    with h5py.File(tmp_path / "f.h5", "w") as f:
        dset = f.create_dataset("d", shape=(3, 1, 5, 5), dtype="u2", chunks=(2, 1, 4, 4), fillvalue=9,
                                **CATALOG["gzip_1"].h5_kwargs())
        piece = block_data(Block(0, np.ones((3, 1, 5, 5), np.uint16)), dset)[2:, :, 4:, 4:]
        stored, *_ = ChunkEncoder(codec, dset.chunks, dset.fillvalue, dset.shape, None)(((1, 0, 1, 1), piece))
        chunk = codec.decode(stored, (2, 1, 4, 4), np.dtype("u2"))
    assert chunk[0, 0, 0, 0] == 1 and (chunk[1] == 9).all() and (chunk[0, 0, 1:] == 9).all()


class _ViewCodec:
    """A codec whose encode hands back a view of its input (as a careless one might): the encoder must copy it."""

    name = "view"

    def encode(self, chunk: np.ndarray) -> memoryview:
        return memoryview(chunk.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("codec_name", ["none", "blosc_lz4", "view"])
def test_chunks_encoded_one_after_another_in_a_thread_do_not_share_the_gather_buffer(codec_name: str) -> None:
    chunks, shape = (2, 2, 4, 4), (3, 4, 5, 4)
    cube = np.random.default_rng(3).integers(0, 60000, size=shape, dtype=np.uint16)
    codec = _ViewCodec() if codec_name == "view" else chunk_codec_for(CATALOG[codec_name], np.dtype("u2"))
    encoder = ChunkEncoder(codec, chunks, np.uint16(9), shape, ALGORITHM)  # type: ignore[arg-type]
    pieces = [((0, 0, 0, 0), cube[:2, :2, :4]), ((1, 1, 1, 0), cube[2:, 2:, 4:]), ((0, 1, 0, 0), cube[:2, 2:, :4])]
    results = [encoder(item) for item in pieces]  # one thread: each chunk is gathered into the same buffer
    record = ChunkChecksums("d", chunks, (2, 2, 2, 1))
    for (_index, piece), (stored, stored_crc, raw_crc, *_) in zip(pieces, results, strict=True):
        expected = np.full(chunks, 9, np.uint16)
        expected[tuple(slice(0, n) for n in piece.shape)] = piece
        back = np.frombuffer(stored, np.uint16).reshape(chunks) if codec_name == "view" else \
            codec.decode(stored, chunks, np.dtype("u2"))
        np.testing.assert_array_equal(back, expected)
        assert type(stored) is bytes and (stored_crc, raw_crc) == (record.crc(stored), record.crc(expected))


@pytest.mark.parametrize("rows", [1, 3])
def test_blocks_not_on_chunk_rows_are_regrouped_by_the_engine(rows: int, tmp_path: Path) -> None:
    codec = CATALOG["gzip_1"]
    cube = make_cube("uint16")
    write_parallel_cube(tmp_path / "b.h5", blocks_of(cube, rows), SHAPE, cube.dtype, CHUNKS, codec, workers=2)
    with h5py.File(tmp_path / "b.h5", "r") as f:
        np.testing.assert_array_equal(f[DSET][...], cube)
    with h5py.File(tmp_path / "c.h5", "w") as f, pytest.raises(StempressError, match="whole chunk rows"):
        block_data(Block(1, cube[1:3]), f.create_dataset("d", shape=SHAPE, dtype=cube.dtype, chunks=CHUNKS))


def test_lossy_dtype_is_refused(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "d.h5", "w") as f:
        dset = f.create_dataset("d", shape=(2, 2, 4, 4), dtype="u1", chunks=(2, 2, 4, 4))
        with pytest.raises(StempressError, match="losslessly"):
            block_data(Block(0, np.ones((2, 2, 4, 4), np.uint16)), dset)


@pytest.mark.parametrize("name", ["lzf", "szip"])
def test_fallback_codecs_use_the_filter_path_and_say_why(name: str, tmp_path: Path) -> None:
    codec = CATALOG[name]
    if not codec.available:
        pytest.skip(codec.unavailable_reason())
    cube = make_cube("uint16")
    path = tmp_path / "f.h5"
    seen: list[int] = []
    outcome = write_parallel_cube(path, blocks_of(cube), SHAPE, cube.dtype, CHUNKS, codec, workers=2,
                                  progress=lambda done, _total: seen.append(done))
    assert not outcome.direct and outcome.fallback_reason and name in outcome.fallback_reason
    assert seen[-1] == cube.nbytes
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f[DSET][...], cube)
    np.testing.assert_array_equal(read_all(read_parallel_cube_blocks(path, 3, codec, workers=2)), cube)


def test_reading_with_the_wrong_codec_is_refused(tmp_path: Path) -> None:
    cube = make_cube("uint16")
    path = tmp_path / "w.h5"
    write_parallel_cube(path, blocks_of(cube), SHAPE, cube.dtype, CHUNKS, CATALOG["gzip_6"], workers=2)
    with pytest.raises(StempressError, match="uses filters"):
        read_all(read_parallel_cube_blocks(path, 2, CATALOG["zstd_3"], workers=2))


def test_progress_sums_to_the_cube(tmp_path: Path) -> None:
    cube = make_cube("uint8")
    seen: list[tuple[int, int]] = []
    write_parallel_cube(tmp_path / "p.h5", blocks_of(cube, 2), SHAPE, cube.dtype, CHUNKS, CATALOG["zstd_1"],
                        workers=2, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (cube.nbytes, cube.nbytes) and [d for d, _ in seen] == sorted(d for d, _ in seen)


class GatedCodec:
    """A real codec that counts calls; the first call waits until `bound` calls have started, so an
    implementation that lets more chunks into flight would show it (the counts, not timing, are asserted)."""

    def __init__(self, inner, bound: int) -> None:
        self.inner, self.name, self.bound = inner, inner.name, bound
        self.lock = threading.Lock()
        self.started = self.finished = 0
        self.enough = threading.Event()

    def _enter(self) -> bool:
        with self.lock:
            self.started += 1
            first = self.started == 1
            if self.started >= self.bound:
                self.enough.set()
        if first:
            self.enough.wait(timeout=10)
        return first

    def _leave(self) -> None:
        with self.lock:
            self.finished += 1

    def encode(self, chunk):
        self._enter()
        try:
            return self.inner.encode(chunk)
        finally:
            self._leave()

    def decode(self, data, shape, dtype):
        self._enter()
        try:
            return self.inner.decode(data, shape, dtype)
        finally:
            self._leave()


class CountingDataset:
    """A real h5py dataset whose read_direct_chunk calls are counted (everything else passes through)."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self._dataset, self.reads = dataset, 0
        outer = self

        class Id:
            def __getattr__(self, name):
                return getattr(dataset.id, name)

            def read_direct_chunk(self, offset):
                outer.reads += 1
                return dataset.id.read_direct_chunk(offset)

        self.id = Id()

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def test_read_keeps_at_most_the_bound_of_chunks_in_flight(tmp_path: Path) -> None:
    bound = 3
    cube = make_cube("uint16", shape=(8, 8, 8, 8))
    path = tmp_path / "r.h5"
    write_parallel_cube(path, blocks_of(cube, 8), cube.shape, cube.dtype, (1, 2, 8, 8), CATALOG["gzip_1"],
                        workers=2)
    codec = GatedCodec(chunk_codec_for(CATALOG["gzip_1"], cube.dtype), bound)
    peak = 0
    with h5py.File(path, "r") as f:
        dset = CountingDataset(f[DSET])
        original = codec._enter

        def enter() -> bool:
            nonlocal peak
            first = original()
            peak = max(peak, dset.reads - codec.finished)
            return first

        codec._enter = enter
        back = read_all(read_chunks_parallel(dset, codec, workers=2, rows=3, max_in_flight=bound))
    assert dset.reads == 32
    assert peak == bound
    np.testing.assert_array_equal(back, cube)
