"""The study's non-HDF5 baselines: streamed in blocks, bit-exact on every dtype (its uint8 cast was not)."""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from stempress.bench.baselines import FILE_FORMATS, FileFormat, Uint8Overflow, file_format
from stempress.codecs.catalog import CATALOG, get_codec
from stempress.data.base import SUPPORTED_DTYPES, Block
from stempress.errors import StempressError

SHAPE = (5, 3, 6, 7)
#: The study's baselines store any dtype; counts-only formats (the entropy code) are tested on counts below.
FORMATS = [name for name in FILE_FORMATS if not CATALOG[name].counts_only]
COUNT_FORMATS = [name for name in FILE_FORMATS if CATALOG[name].counts_only]


def make_cube(dtype: np.dtype, seed: int = 0) -> np.ndarray:
    """Sparse Poisson counts, a few values uint8 cannot hold; fractions for floats, negatives if signed."""
    rng = np.random.default_rng(seed)
    cube = rng.poisson(0.5, size=SHAPE).astype(dtype)
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    cube[0, 0, 0, :2] = [info.max, 256 if info.max > 255 else 100]
    if dtype.kind == "f":
        cube[1] += np.float32(0.25)
        cube[2, 1, 2, :3] = [0.5, 1035.5, 1e-7]
    if dtype.kind in "if" and info.min < 0:
        cube[3, 2, 1, :2] = [-1, info.min]
    return cube


def with_specials(dtype: str) -> np.ndarray:
    cube = make_cube(np.dtype(dtype), seed=3)
    cube[4, 0, 5, :6] = [np.nan, np.inf, -np.inf, -0.0, 0.25, np.finfo(dtype).smallest_subnormal]
    return cube


def blocks_of(cube: np.ndarray, sizes: tuple[int, ...] = (1, 3, 1)) -> Iterator[Block]:
    """A generator, as a source gives them: the writer cannot look ahead or go back."""
    start = 0
    for n in sizes:
        yield Block(start, cube[start:start + n].copy())
        start += n


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}")


def read_all(fmt: FileFormat, path: Path, cube: np.ndarray, rows: int | None) -> np.ndarray:
    blocks = list(fmt.read(path, cube.shape, cube.dtype, rows=rows))
    assert [b.start for b in blocks] == list(range(0, cube.shape[0], rows or cube.shape[0]))
    assert all(b.data.dtype == cube.dtype for b in blocks)
    return np.concatenate([b.data for b in blocks])


def roundtrip(name: str, cube: np.ndarray, tmp_path: Path) -> list[Path]:
    fmt = FILE_FORMATS[name]
    path = tmp_path / f"cube{fmt.suffix}"
    written = fmt.write(path, blocks_of(cube), cube.shape, cube.dtype)
    assert written[0] == path and all(p.exists() for p in written)
    for rows in (1, 3, None):
        np.testing.assert_array_equal(bits(read_all(fmt, path, cube, rows)), bits(cube))
    return written


@pytest.mark.parametrize("dtype", [str(d) for d in SUPPORTED_DTYPES])
@pytest.mark.parametrize("name", FORMATS)
def test_baseline_roundtrips_bit_exact(name: str, dtype: str, tmp_path: Path) -> None:
    roundtrip(name, make_cube(np.dtype(dtype)), tmp_path)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", FORMATS)
def test_nan_inf_and_negative_zero_survive(name: str, dtype: str, tmp_path: Path) -> None:
    roundtrip(name, with_specials(dtype), tmp_path)


def test_registry_matches_the_catalog() -> None:
    assert set(FILE_FORMATS) == {c.name for c in CATALOG.values() if c.storage == "file"}
    for name, fmt in FILE_FORMATS.items():
        assert isinstance(fmt, FileFormat) and fmt.name == name
        assert file_format(name) is fmt and file_format(get_codec(name)) is fmt


def test_hdf5_codec_has_no_file_format() -> None:
    with pytest.raises(StempressError, match="h5_kwargs"):
        file_format("gzip_6")


def pickled_lists(path: Path) -> list[list]:
    lists = []
    with path.open("rb") as f:
        while True:
            try:
                lists.append(pickle.load(f))
            except EOFError:
                return lists


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_sparse_csr_is_the_studys_file(dtype: str, tmp_path: Path) -> None:
    """The study pickles the list of every frame's ``csr_matrix(frame.astype(uint16))`` in one dump: our file
    has its size to the byte (no per-frame pickle headers), its uint16 values, and the same matrices."""
    cube = make_cube(np.dtype(dtype))
    [path] = roundtrip("sparse_csr", cube, tmp_path)
    study = [csr_matrix(frame.astype(np.uint16)) for frame in cube.reshape(-1, *SHAPE[2:])]
    assert path.stat().st_size == len(pickle.dumps(study))
    [frames] = pickled_lists(path)
    assert len(frames) == SHAPE[0] * SHAPE[1]
    for m, theirs in zip(frames, study, strict=True):
        assert isinstance(m, csr_matrix) and m.dtype == np.uint16 and m.nnz == theirs.nnz
        np.testing.assert_array_equal(m.toarray(), theirs.toarray())


def test_sparse_csr_of_a_large_cube_is_several_lists(tmp_path: Path, monkeypatch) -> None:
    import stempress.bench.baselines as baselines

    monkeypatch.setattr(baselines, "PICKLE_BYTES", 200)  # a few frames per list
    cube = make_cube(np.dtype("float32"))
    [path] = roundtrip("sparse_csr", cube, tmp_path)
    lists = pickled_lists(path)
    assert len(lists) > 3 and sum(map(len, lists)) == SHAPE[0] * SHAPE[1]
    assert all(m.dtype == np.float32 for frames in lists for m in frames)  # lossless: not the study's uint16


def study_uint8_overflow(cube: np.ndarray, folder: Path) -> tuple[Path, Path]:
    """The study's files: clipped uint8 with 255 marking values >= 255, and their map, zip-compressed."""
    small = np.clip(cube, 0, 254).astype(np.uint8)
    mask = cube >= 255
    small[mask] = 255
    np.save(folder / "custom_uint8.npy", small)
    np.savez_compressed(folder / "custom_overflow.npz", coords=np.column_stack(np.where(mask)), values=cube[mask])
    return folder / "custom_uint8.npy", folder / "custom_overflow.npz"


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_uint8_overflow_of_counts_is_the_studys_pair_of_files(dtype: str, tmp_path: Path) -> None:
    cube = make_cube(np.dtype(dtype))
    main, npz = roundtrip("uint8_overflow", cube, tmp_path)
    assert npz == Uint8Overflow.side_file(main)
    study_main, study_npz = study_uint8_overflow(cube, tmp_path)
    assert main.read_bytes() == study_main.read_bytes()
    assert npz.stat().st_size == study_npz.stat().st_size  # the zip differs only in its time stamps
    ours, theirs = np.load(npz), np.load(study_npz)
    for key in ("coords", "values"):
        np.testing.assert_array_equal(ours[key], theirs[key])
        assert ours[key].dtype == theirs[key].dtype


def test_uint8_overflow_keeps_fractions_and_signs_exactly(tmp_path: Path) -> None:
    for dtype in ("float32", "int16"):
        cube = make_cube(np.dtype(dtype))
        _, npz = roundtrip("uint8_overflow", cube, tmp_path)
        not_uint8 = (cube != np.round(cube)) | (cube > 254) | (cube < 0)
        assert len(np.load(npz)["values"]) == np.count_nonzero(not_uint8)  # the study mapped only >= 255
        for p in tmp_path.iterdir():
            p.unlink()


def test_uint8_overflow_streams_many_overflows_in_chunks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Uint8Overflow, "chunk", 3)  # overflows zipped and read back three at a time
    cube = make_cube(np.dtype("uint16")) + np.uint16(250)
    roundtrip("uint8_overflow", cube, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.npy", "cube.npy.overflow.npz"]  # nothing staged


def test_simple_gzip_is_np_save_through_gzip(tmp_path: Path) -> None:
    cube = make_cube(np.dtype("float32"))
    [path] = roundtrip("simple_gzip", cube, tmp_path)
    expected = io.BytesIO()
    np.save(expected, cube)
    assert gzip.decompress(path.read_bytes()) == expected.getvalue()
    with gzip.open(path, "rb") as f:
        np.testing.assert_array_equal(np.load(f), cube)
    study = tmp_path / "simple_gzip.npy.gz"  # the study's: np.save into gzip.open, named like this
    with gzip.open(study, "wb") as f:
        np.save(f, cube)
    ours, theirs = path.read_bytes(), study.read_bytes()
    assert len(ours) == len(theirs) and ours[:4] + ours[8:] == theirs[:4] + theirs[8:]  # bytes 4-8: the time


@pytest.mark.parametrize("name", FORMATS)
def test_rows_out_of_order_are_refused_and_nothing_is_left(name: str, tmp_path: Path) -> None:
    cube = make_cube(np.dtype("uint16"))
    fmt = FILE_FORMATS[name]
    bad = [Block(0, cube[:2]), Block(3, cube[3:])]
    with pytest.raises(StempressError, match="expected 2"):
        fmt.write(tmp_path / f"x{fmt.suffix}", bad, cube.shape, cube.dtype)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", FORMATS)
def test_short_or_mistyped_input_is_refused(name: str, tmp_path: Path) -> None:
    cube = make_cube(np.dtype("uint16"))
    fmt = FILE_FORMATS[name]
    with pytest.raises(StempressError, match="feed every row"):
        fmt.write(tmp_path / "a", blocks_of(cube, (1, 3)), cube.shape, cube.dtype)
    with pytest.raises(StempressError, match="dtype"):
        fmt.write(tmp_path / "b", blocks_of(cube), cube.shape, np.float32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["uint8_overflow", "simple_gzip"])
def test_reading_with_the_wrong_shape_is_refused(name: str, tmp_path: Path) -> None:
    cube = make_cube(np.dtype("uint16"))
    fmt = FILE_FORMATS[name]
    path = tmp_path / f"c{fmt.suffix}"
    fmt.write(path, blocks_of(cube), cube.shape, cube.dtype)
    with pytest.raises(StempressError, match="written with"):
        next(fmt.read(path, (4, *SHAPE[1:]), cube.dtype))


@pytest.mark.parametrize("name", ["sparse_csr", "simple_gzip"])
def test_truncated_file_is_reported(name: str, tmp_path: Path) -> None:
    cube = make_cube(np.dtype("uint16"))
    fmt = FILE_FORMATS[name]
    path = tmp_path / f"c{fmt.suffix}"
    fmt.write(path, blocks_of(cube), cube.shape, cube.dtype)
    bigger = (SHAPE[0] + 2, *SHAPE[1:])
    if name == "simple_gzip":  # same header, fewer bytes than it promises
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[: len(raw) - cube[0].nbytes]))
        bigger = SHAPE
    with pytest.raises(StempressError, match="truncated"):
        list(fmt.read(path, bigger, cube.dtype))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
@pytest.mark.parametrize("name", COUNT_FORMATS)
def test_counts_only_formats_roundtrip_counts(name: str, dtype: str, tmp_path: Path) -> None:
    roundtrip(name, make_cube(np.dtype(dtype)), tmp_path)


def test_each_baseline_says_how_it_differs_from_the_studys() -> None:
    from stempress.bench.baselines import study_difference

    assert study_difference("gzip_6", "uint16") is None and study_difference("events_raw_csr", "uint8") is None
    assert study_difference("sparse_csr", "uint8").startswith("same file as the study's")
    floats = study_difference("sparse_csr", "float32")
    assert "loses fractions" in floats and "lossless" in floats and "2 frames" in floats
    assert study_difference("uint8_overflow", "uint16").startswith("same files as the study's")
    assert "loses the negative values" in study_difference("uint8_overflow", "int16")
    assert "does not time the read" in study_difference("simple_gzip", "float64")
