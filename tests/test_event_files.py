"""Counted-electron files as a product: every format (stempy, raw_csr, entropy-coded) written from the CLI and the
API, read back by every command, checksummed per chunk so a flipped byte is an error, and calibrated."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest

from stempress.bench.api import open_sources
from stempress.data.base import ArraySource
from stempress.data.event_checksums import MAX_CHUNKS, ChecksumError
from stempress.data.open import open_source
from stempress.errors import StempressError
from stempress.events import raw_csr_files, write_raw_csr, write_stempy
from stempress.events.counting import CountingParams
from stempress.events.entropy_file import write_entropy_events
from stempress.reduce.calibration import Calibration
from stempress.reduce.output import read_reduced
from stempress.store.compress import compress
from stempress.store.count import count_to_file
from stempress.store.reduced import reduce_to_file
from test_verify import flip_byte

#: A counting-mode synthetic cube with calibration (0.5 nm scan step, mrad detector, known beam centre).
COUNTED = "synthetic:diffraction?scan=6x5&det=24x24&dose=40&dtype=uint8&seed=4"
#: Its integrating twin (ADU = 40 per electron + 100), what ``count`` starts from.
INTEGRATING = "synthetic:diffraction?scan=6x5&det=24x24&dose=40&mode=integrating&gain=40&offset=100&seed=4"
WRITERS = {"stempy": (write_stempy, "ev.h5"), "raw_csr": (write_raw_csr, "ev.toml"),
           "entropy": (write_entropy_events, "ev.h5")}


def stempress(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stempress", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def counted() -> np.ndarray:
    with open_source(COUNTED) as source:
        return source.read_rows(0, source.shape[0])


def flip(path: Path, offset: int) -> None:
    """Flip the lowest bit of one byte: an index or count that stays plausible."""
    flip_byte(path, offset, 1)


# ---------------------------------------------------------------- calibration and provenance


@pytest.mark.parametrize("fmt", WRITERS)
def test_every_event_file_carries_the_sources_calibration_and_provenance(tmp_path, counted, fmt):
    writer, name = WRITERS[fmt]
    with open_source(COUNTED) as source:
        want = Calibration.from_metadata(source.metadata, source.shape[2:])
        out = writer(source, tmp_path / name)
    with open_source(out) as back:
        np.testing.assert_array_equal(back.read_rows(0, back.shape[0]), counted)
        got = Calibration.from_metadata(back.metadata, back.shape[2:])
        provenance = back.metadata["provenance"]
    assert want.origin == "metadata" and want.q_units == "mrad" and want.r_units == "nm"  # the source knows them
    assert got == want  # scan step, detector pixel size, units, beam centre and BF radius, all read back
    assert provenance["written_as"] == fmt and provenance["source"]["shape"] == list(counted.shape)
    assert provenance["written_by"].startswith("stempress ")


@pytest.mark.parametrize("fmt, name", [("stempy", "ev.h5"), ("raw_csr", "ev.toml"), ("entropy", "ev.h5")])
def test_count_output_reduces_in_the_sources_units(tmp_path, fmt, name):
    params = CountingParams(dark=100.0, gain=40.0, threshold=20.0)
    with open_source(INTEGRATING) as source:
        report = count_to_file(source, tmp_path / name, params, fmt=fmt)
    assert report.n_electrons > 0
    with open_source(tmp_path / name) as events:
        assert events.metadata["counting"]["gain"] == 40.0
        reduce_to_file(events, ["bf", "adf:inner=1.2,outer=3,units=bf"], tmp_path / "reduced.h5")
    _, record = read_reduced(tmp_path / "reduced.h5")
    calibration = record["calibration"]
    assert calibration["q_units"] == "mrad" and calibration["r_units"] == "nm" and calibration["r_pixel_size"] == 0.5


def test_real_peers_see_the_record_and_ignore_the_checksums(tmp_path, counted):
    sparse_array = pytest.importorskip("stempy.io.sparse_array", reason="stempy is not installed here")
    with open_source(COUNTED) as source:
        out = write_stempy(source, tmp_path / "ev.h5")
    array = sparse_array.SparseArray.from_hdf5(str(out))
    np.testing.assert_array_equal(array.to_dense(), counted)
    assert array.metadata["stempress"]["calibration"]["R_pixel_units"] == "nm"


# ---------------------------------------------------------------- checksums


def _raw_csr(tmp_path: Path, cube: np.ndarray) -> Path:
    return write_raw_csr(ArraySource(cube, name="cube"), tmp_path / "ev.toml")


def test_an_in_range_flipped_index_in_raw_csr_is_an_error_naming_the_scan_row(tmp_path, counted):
    toml = _raw_csr(tmp_path, counted)
    indices = raw_csr_files(toml)["indices"]
    with open_source(toml) as source:
        assert source.metadata["checksums"].startswith("crc")
        first_of_row_3 = int(np.asarray(source._indptr)[3 * counted.shape[1]])
    values = np.fromfile(indices, "<u4")
    assert values[first_of_row_3] ^ 1 < 24 * 24  # the corrupt index still names a pixel of the frame
    flip(indices, 4 * first_of_row_3)
    with open_source(toml) as source:
        np.testing.assert_array_equal(source.read_rows(0, 3), counted[:3])  # rows before it read fine
        with pytest.raises(ChecksumError, match=r"scan row 3: indices bytes of chunk 3 fail"):
            source.read_rows(0, 6)


@pytest.mark.parametrize("part", ["indptr", "data"])
def test_a_flipped_byte_in_any_raw_csr_file_is_an_error(tmp_path, counted, part):
    toml = _raw_csr(tmp_path, counted)
    path = raw_csr_files(toml)[part]
    flip(path, path.stat().st_size // 2)
    with open_source(toml) as source, pytest.raises(StempressError, match=f"{part} bytes of chunk"):
        source.read_rows(0, source.shape[0])


def test_a_flipped_index_in_stempy_is_an_error(tmp_path):
    cube = np.zeros((3, 4, 64, 64), np.uint8)  # 4096 pixels: indices need two bytes, so a pattern is unique
    cube[2, 1, [5, 17, 40], [3, 60, 33]] = 1
    cube[0, 0, 1, 1] = 2
    out = write_stempy(ArraySource(cube), tmp_path / "ev.h5")
    pattern = np.asarray([5 * 64 + 3, 17 * 64 + 60, 40 * 64 + 33], "<u4").tobytes()
    data = out.read_bytes()
    assert data.count(pattern) == 1
    flip(out, data.index(pattern) + 4)  # the second index's low byte: another pixel of the same frame
    with open_source(out) as source:
        assert source.metadata["checksums"].startswith("crc")
        np.testing.assert_array_equal(source.read_rows(0, 2), cube[:2])
        with pytest.raises(ChecksumError, match=r"scan row 2: indices bytes"):
            source.read_rows(2, 3)


def test_files_without_checksums_still_read_and_say_so(tmp_path, counted):
    toml = _raw_csr(tmp_path, counted)
    conf = tomllib.loads(toml.read_text())
    assert set(conf["stempress"]["checksums"]) == {"algorithm", "positions_per_chunk", "indptr", "indices", "data"}
    toml.write_text(toml.read_text().split("[stempress.checksums]")[0])  # as LiberTEM or an older stempress wrote it
    out = write_stempy(ArraySource(counted), tmp_path / "ev.h5")
    with h5py.File(out, "a") as f:
        del f["stempress/checksums"]
    for path in (toml, out):
        with open_source(path) as source:
            assert source.metadata["checksums"] == "none"
            np.testing.assert_array_equal(source.read_rows(0, source.shape[0]), counted)


def test_tall_scans_get_at_most_max_chunks_of_whole_rows(tmp_path):
    rows = MAX_CHUNKS + 6
    cube = np.zeros((rows, 2, 2, 2), np.uint8)
    cube[-1, -1, -1, -1] = 3  # the only electron, in the last chunk: scan rows rows-2 and rows-1
    toml = _raw_csr(tmp_path, cube)
    stored = tomllib.loads(toml.read_text())["stempress"]["checksums"]
    assert stored["positions_per_chunk"] == 2 * 2 and len(stored["data"]) == rows // 2 <= MAX_CHUNKS
    flip(raw_csr_files(toml)["data"], 0)
    with open_source(toml) as source:
        source.read_rows(0, rows - 2)
        with pytest.raises(ChecksumError, match=rf"scan rows {rows - 2}-{rows - 1}: data bytes of chunk"):
            source.read_rows(rows - 1, rows)


# ---------------------------------------------------------------- the entropy-coded format, everywhere


def test_count_and_compress_write_the_entropy_format_from_the_command_line(tmp_path, counted):
    frames = tmp_path / "frames.npy"
    with open_source(INTEGRATING) as source:
        np.save(frames, source.read_rows(0, source.shape[0]))
    result = stempress("count", frames, "--out", tmp_path / "counted.h5", "--format", "entropy", "--dark", 100,
                       "--gain", 40, "--threshold", 20)
    assert result.returncode == 0, result.stderr
    assert "(entropy)" in result.stdout
    np.save(tmp_path / "counts.npy", counted)
    result = stempress("compress", tmp_path / "counts.npy", tmp_path / "compressed.h5", "--codec", "entropy_poisson",
                       "--workers", 1)
    assert result.returncode == 0, result.stderr
    assert "entropy_poisson" in result.stdout and "ratio" in result.stdout
    with open_source(tmp_path / "compressed.h5") as back:  # lossless for integer counts
        np.testing.assert_array_equal(back.read_rows(0, back.shape[0]), counted)
        assert back.metadata["provenance"]["source"]["file"] == str(tmp_path / "counts.npy")
    result = stempress("verify", tmp_path / "compressed.h5", "--against", tmp_path / "counts.npy")
    assert result.returncode == 0 and "compared bit-exact with the source: OK" in result.stdout, result.stderr
    result = stempress("reduce", tmp_path / "counted.h5", "--target", "bf", "--out", tmp_path / "bf.h5")
    assert result.returncode == 0, result.stderr


def test_compress_entropy_poisson_refuses_float_data_in_one_line(tmp_path):
    with pytest.raises(StempressError, match="codes integer electron counts, not float32 data; choose an HDF5"):
        compress(ArraySource(np.ones((2, 2, 4, 4), np.float32)), tmp_path / "f.h5", codec="entropy_poisson")
    assert list(tmp_path.iterdir()) == []


def test_the_entropy_format_is_a_source_for_bench_and_plan(tmp_path, counted):
    from stempress.plan import cost_table

    out = write_entropy_events(ArraySource(counted, name="counted"), tmp_path / "ev.h5")
    (source,) = open_sources([out], None, None, None)
    with source:
        assert source.shape == counted.shape and source.dtype == counted.dtype
        np.testing.assert_array_equal(source.read_rows(2, 4), counted[2:4])
        table = cost_table(source, ["com"], 0.01, max_positions=8, codecs=("zstd_9",), bins=())
    assert table["passes"].iloc[0] and "entropy-coded events (Poisson model)" in set(table["representation"])


def test_event_formats_are_checked_before_counting(tmp_path):
    params = CountingParams(gain=1.0, threshold=0.5)
    with pytest.raises(StempressError, match=r"the entropy format is an HDF5 file, not \.toml"):
        count_to_file(ArraySource(np.ones((1, 1, 2, 2), np.uint16)), tmp_path / "ev.toml", params, fmt="entropy")
    with pytest.raises(StempressError, match="event format 'zip' is unknown; use one of stempy, raw_csr, entropy"):
        count_to_file(ArraySource(np.ones((1, 1, 2, 2), np.uint16)), tmp_path / "ev.h5", params, fmt="zip")
    assert list(tmp_path.iterdir()) == []
