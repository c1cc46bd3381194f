"""Chunk codecs produce and consume exactly what the declared HDF5 filter pipeline stores (real HDF5, real filters)."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the plugin filters)
import numpy as np
import pytest

from stempress.codecs import bitshuffle as bitshuffle_module
from stempress.codecs.base import ChunkCodec
from stempress.codecs.bitshuffle import bitshuffle_block_size
from stempress.codecs.blosc2 import b2nd_block_shape
from stempress.codecs.catalog import CATALOG, Codec
from stempress.codecs.chunk_codec import chunk_codec_for, direct_chunk_reason
from stempress.codecs.deflate import hdf5_shuffle, hdf5_unshuffle
from stempress.codecs.lz4 import Lz4

HDF5_CODECS = [c for c in CATALOG.values() if c.storage == "hdf5" and c.available]
DIRECT = [c.name for c in HDF5_CODECS if direct_chunk_reason(c) is None]
DTYPES = ["uint8", "uint16", "uint32", "float32"]
SHAPE = (5, 4, 12, 16)
CHUNKS = (2, 3, 8, 16)  # edge chunks on three axes


def make_cube(dtype: str, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """Sparse counts with saturated pixels; float32 as binned means with fractions, a NaN and a tiny value."""
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        cube = (rng.poisson(0.4, size=shape) / 4).astype(np.float32)
        cube.flat[:4] = [np.nan, 1035.5, 1e-7, -0.0]
        return cube
    cube = rng.poisson(0.3, size=shape).astype(dtype)
    cube[..., 6, 8] = {"uint8": 255, "uint16": 4095, "uint32": 70000}[dtype]
    cube.flat[-1] = np.iinfo(dtype).max
    return cube


def bits(a: np.ndarray) -> np.ndarray:
    """Compare floats bit for bit (NaN == NaN, -0.0 != 0.0)."""
    return a.view(f"u{a.dtype.itemsize}")


def chunk_indices(shape: tuple[int, ...], chunks: tuple[int, ...]):
    return itertools.product(*(range(-(-n // c)) for n, c in zip(shape, chunks, strict=True)))


def region(index: tuple[int, ...], chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, shape, strict=True))


def padded(piece: np.ndarray, chunks: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(chunks, dtype=piece.dtype)
    full[tuple(slice(0, n) for n in piece.shape)] = piece
    return full


def write_ours(dset: h5py.Dataset, cube: np.ndarray, codec: ChunkCodec) -> None:
    for index in chunk_indices(cube.shape, dset.chunks):
        sl = region(index, dset.chunks, cube.shape)
        dset.id.write_direct_chunk(tuple(s.start for s in sl), codec.encode(padded(cube[sl], dset.chunks)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DIRECT)
def test_our_chunks_read_back_through_the_filter(name: str, dtype: str, tmp_path: Path) -> None:
    codec = CATALOG[name]
    cube = make_cube(dtype)
    with h5py.File(tmp_path / "ours.h5", "w") as f:
        dset = f.create_dataset("d", shape=SHAPE, dtype=dtype, chunks=CHUNKS, **codec.h5_kwargs())
        write_ours(dset, cube, chunk_codec_for(codec, cube.dtype))
    with h5py.File(tmp_path / "ours.h5", "r") as f:  # plain h5py slicing: HDF5 runs the declared filters
        back = f["d"][...]
        edge = f["d"][4:, 3:, 8:, :]
    assert back.dtype == cube.dtype
    np.testing.assert_array_equal(bits(back), bits(cube))
    np.testing.assert_array_equal(bits(edge), bits(cube[4:, 3:, 8:, :]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DIRECT)
def test_filter_written_chunks_decode_with_ours(name: str, dtype: str, tmp_path: Path) -> None:
    codec = CATALOG[name]
    cube = make_cube(dtype, seed=1)
    ours = chunk_codec_for(codec, cube.dtype)
    with h5py.File(tmp_path / "filter.h5", "w") as f:
        dset = f.create_dataset("d", data=cube, chunks=CHUNKS, **codec.h5_kwargs())
        for index in chunk_indices(SHAPE, CHUNKS):
            sl = region(index, CHUNKS, SHAPE)
            mask, stored = dset.id.read_direct_chunk(tuple(s.start for s in sl))
            assert mask == 0
            chunk = ours.decode(stored, CHUNKS, cube.dtype)
            assert chunk.shape == CHUNKS and chunk.dtype == cube.dtype
            inside = chunk[tuple(slice(0, s.stop - s.start) for s in sl)]
            np.testing.assert_array_equal(bits(inside), bits(cube[sl]), err_msg=f"chunk {index}")


def test_every_hdf5_codec_has_a_chunk_codec_or_a_reason() -> None:
    for codec in CATALOG.values():
        reason = direct_chunk_reason(codec)
        made = chunk_codec_for(codec, np.dtype("uint16"))
        if reason is None:
            assert isinstance(made, ChunkCodec) and made.name == codec.name
        else:
            assert made is None and reason.strip() and "\n" not in reason


@pytest.mark.parametrize("name", ["none", "gzip_1", "gzip_6", "gzip_9", "shuffle_gzip_6", "blosc_zstd",
                                  "blosc_lz4_bitshuffle", "blosc2_zstd", "zstd_3", "lz4_hdf5", "bzip2_9"])
def test_core_codecs_are_direct_capable(name: str) -> None:
    assert direct_chunk_reason(CATALOG[name]) is None


@pytest.mark.parametrize("name", ["lzf", "szip", "sparse_csr", "uint8_overflow", "simple_gzip"])
def test_fallback_codecs_say_why(name: str) -> None:
    codec = CATALOG[name]
    reason = direct_chunk_reason(codec)
    assert reason
    assert name.split("_")[0] in reason.lower() or "file format" in reason
    assert chunk_codec_for(codec, np.dtype("uint16")) is None


def test_bitshuffle_without_its_package_falls_back_naming_the_requirement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bitshuffle_module, "bitshuffle", None)
    reason = direct_chunk_reason(CATALOG["bitshuffle_lz4"])
    assert reason and "pip install" in reason and "bitshuffle" in reason
    assert chunk_codec_for(CATALOG["bitshuffle_lz4"], np.dtype("uint16")) is None


def test_object_dtype_has_no_chunk_codec() -> None:
    assert direct_chunk_reason(CATALOG["gzip_6"], np.dtype(object))
    assert chunk_codec_for(CATALOG["gzip_6"], np.dtype(object)) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_hdf5_shuffle_matches_the_builtin_filter(dtype: str, tmp_path: Path) -> None:
    cube = make_cube(dtype)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        dset = f.create_dataset("d", data=cube, chunks=cube.shape, shuffle=True, compression="gzip")
        _, stored = dset.id.read_direct_chunk((0, 0, 0, 0))
    import zlib

    shuffled = np.frombuffer(zlib.decompress(stored), dtype=np.uint8)
    np.testing.assert_array_equal(hdf5_shuffle(cube), shuffled)
    np.testing.assert_array_equal(hdf5_unshuffle(shuffled, cube.itemsize), bits(cube).reshape(-1).view(np.uint8))


def _filter_chunk(tmp_path: Path, codec: Codec, chunk: np.ndarray) -> bytes:
    with h5py.File(tmp_path / "one.h5", "w") as f:
        dset = f.create_dataset("d", data=chunk, chunks=chunk.shape, **codec.h5_kwargs())
        return dset.id.read_direct_chunk((0,) * chunk.ndim)[1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_lz4_header_and_multi_block_layout_match_the_filter(dtype: str, tmp_path: Path) -> None:
    """Small blocks exercise the per-block lengths and the raw-copy of a block LZ4 cannot shrink."""
    codec = Lz4("lz4_small", nbytes=1000)
    chunk = make_cube(dtype, shape=(1, 2, 16, 32))
    chunk[0, 1] = np.random.default_rng(5).integers(0, 2**8, size=(16, 32)).astype(dtype)  # incompressible part
    stored = _filter_chunk(tmp_path, codec, chunk)
    ours = chunk_codec_for(codec, chunk.dtype)
    mine = ours.encode(chunk)
    assert mine[:12] == stored[:12] == struct.pack(">QI", chunk.nbytes, 1000)
    np.testing.assert_array_equal(bits(ours.decode(stored, chunk.shape, chunk.dtype)), bits(chunk))
    with h5py.File(tmp_path / "mine.h5", "w") as f:
        dset = f.create_dataset("d", shape=chunk.shape, dtype=dtype, chunks=chunk.shape, **codec.h5_kwargs())
        dset.id.write_direct_chunk((0, 0, 0, 0), mine)
        np.testing.assert_array_equal(bits(dset[...]), bits(chunk))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["bitshuffle_lz4", "bitshuffle_zstd"])
def test_bitshuffle_header_matches_the_filter(name: str, dtype: str, tmp_path: Path) -> None:
    codec = CATALOG[name]
    if direct_chunk_reason(codec):
        pytest.skip(direct_chunk_reason(codec))
    chunk = make_cube(dtype, shape=(1, 3, 32, 33))  # 3168 elements: a partial block and a <8 element tail
    stored = _filter_chunk(tmp_path, codec, chunk)
    mine = chunk_codec_for(codec, chunk.dtype).encode(chunk)
    block = bitshuffle_block_size(chunk.itemsize) * chunk.itemsize
    assert mine[:12] == stored[:12] == struct.pack(">QI", chunk.nbytes, block)


@pytest.mark.parametrize("chunks", [(1, 16, 256, 256), (1, 1, 256, 256), (16, 16, 128, 128), (3, 5, 7, 9),
                                    (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_blosc2_frames_use_the_filters_b2nd_block_shape(chunks: tuple[int, ...], dtype: str,
                                                         tmp_path: Path) -> None:
    blosc2 = pytest.importorskip("blosc2")
    codec = CATALOG["blosc2_zstd_bitshuffle"]
    chunk = np.zeros(chunks, dtype=dtype)
    chunk.flat[::97] = 3
    theirs = blosc2.ndarray_from_cframe(_filter_chunk(tmp_path, codec, chunk))
    mine = blosc2.ndarray_from_cframe(chunk_codec_for(codec, chunk.dtype).encode(chunk))
    assert tuple(mine.blocks) == tuple(theirs.blocks)
    assert tuple(mine.chunks) == tuple(theirs.chunks) == chunks
    assert mine.schunk.cparams.filters == theirs.schunk.cparams.filters


def test_b2nd_block_shape_doubles_from_the_innermost_axis() -> None:
    assert b2nd_block_shape(65536, 2, (1, 16, 256, 256)) == (1, 16, 32, 64)
    assert b2nd_block_shape(8, 1, (4, 4, 4)) == (2, 2, 2)  # the minimum already fills the block
    assert b2nd_block_shape(10**9, 4, (3, 5, 7, 9)) == (3, 5, 7, 9)  # never larger than the chunk


@pytest.mark.parametrize("name", DIRECT)
def test_decoding_a_truncated_chunk_fails_loudly(name: str) -> None:
    if name == "none":
        pytest.skip("raw chunks have no structure; only their size can be checked")
    chunk = make_cube("uint16", shape=(1, 2, 16, 16))
    ours = chunk_codec_for(CATALOG[name], chunk.dtype)
    stored = ours.encode(chunk)
    with pytest.raises(Exception):  # noqa: B017 - each library raises its own type; silence is the failure
        ours.decode(stored[: len(stored) // 2], chunk.shape, chunk.dtype)


def test_raw_chunks_check_the_size() -> None:
    ours = chunk_codec_for(CATALOG["none"], np.dtype("uint16"))
    with pytest.raises(ValueError, match="expected"):
        ours.decode(b"\0" * 10, (2, 3), np.dtype("uint16"))


def test_blosc2_one_dimensional_chunks_are_plain_super_chunks(tmp_path: Path) -> None:
    """Rank-1 chunks take the filter's plain-frame branch; both sides must still agree."""
    codec = CATALOG["blosc2_lz4"]
    data = make_cube("uint16", shape=(1, 1, 40, 50)).reshape(-1)
    ours = chunk_codec_for(codec, data.dtype)
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        mine = f.create_dataset("mine", shape=data.shape, dtype=data.dtype, chunks=(512,), **codec.h5_kwargs())
        theirs = f.create_dataset("theirs", data=data, chunks=(512,), **codec.h5_kwargs())
        for start in range(0, data.size, 512):
            piece = np.zeros(512, dtype=data.dtype)
            piece[: min(512, data.size - start)] = data[start:start + 512]
            mine.id.write_direct_chunk((start,), ours.encode(piece))
            decoded = ours.decode(theirs.id.read_direct_chunk((start,))[1], (512,), data.dtype)
            np.testing.assert_array_equal(decoded[: min(512, data.size - start)], data[start:start + 512])
        np.testing.assert_array_equal(mine[...], data)
