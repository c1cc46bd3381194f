"""verify: every chunk's stored and decoded checksums, bit-exact comparison with a source, errors by scan position."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from damage import flip_byte
from real_data import real_file
from stempress.codecs.catalog import get_codec
from stempress.codecs.chunk_codec import direct_chunk_reason
from stempress.data.base import ArraySource
from stempress.data.checksums import CHECKSUM_GROUP, checksum_group_path
from stempress.errors import StempressError
from stempress.store import EMD_DATA_PATH, compress, verify

#: 8 x 6 scan of 16 x 16 frames in chunks of 2 x 4 scan positions: a 4 x 2 grid with edge chunks in x.
SHAPE = (8, 6, 16, 16)
CHUNKS = (2, 4, 16, 16)


def cube(dtype: str = "uint16") -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.poisson(2.0, size=SHAPE).astype(dtype)


def write(tmp_path: Path, data: np.ndarray, codec: str = "blosc_zstd", name: str = "cube.h5") -> Path:
    return compress(ArraySource(data), tmp_path / name, codec=codec, chunks=CHUNKS, workers=2).path


def flip_byte_in_chunk(path: Path, index: tuple[int, ...], dataset: str = EMD_DATA_PATH) -> None:
    """Invert one byte in the middle of a stored chunk."""
    with h5py.File(path, "r") as f:
        dset = f[dataset]
        offset = tuple(i * c for i, c in zip(index, dset.chunks, strict=True))
        info = dset.id.get_chunk_info_by_coord(offset)
    flip_byte(path, info.byte_offset + info.size // 2)


@pytest.mark.parametrize("codec", ["blosc_zstd", "gzip_6", "bitshuffle_lz4", "zstd_3", "lzf"])
def test_an_intact_file_passes_with_every_chunk_checked(tmp_path, codec):
    data = cube()
    path = write(tmp_path, data, codec)
    report = verify(path, against=ArraySource(data))
    assert report.ok, report.summary()
    assert report.chunks_checked == report.chunks_total == 8
    assert report.checksums and report.compared and report.problem is None
    assert report.direct == (direct_chunk_reason(get_codec(codec), data.dtype) is None) and report.codec == codec
    assert "OK" in report.summary()
    assert verify(path).ok


@pytest.mark.parametrize("codec", ["blosc_zstd", "gzip_6", "lzf"])
def test_a_flipped_byte_is_caught_and_named_by_scan_position(tmp_path, codec):
    path = write(tmp_path, cube(), codec)
    flip_byte_in_chunk(path, (2, 1, 0, 0))
    report = verify(path)
    assert not report.ok and report.bad_chunks == 1
    problem = report.problem
    assert problem.kind == "stored" and problem.chunk == (2, 1, 0, 0)
    assert problem.rows == (4, 6) and problem.cols == (4, 6)  # the edge chunk: columns 4-5 of 6
    assert "scan rows 4-5, columns 4-5" in report.summary() and "FAILED" in report.summary()


def _drop_checksums(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f[CHECKSUM_GROUP]


def test_without_checksums_a_corrupt_chunk_is_still_found_by_decoding(tmp_path):
    path = write(tmp_path, cube(), "gzip_6")  # deflate's own Adler-32 makes the corruption fail to decode
    _drop_checksums(path)
    flip_byte_in_chunk(path, (1, 0, 0, 0))
    report = verify(path)
    assert not report.ok and not report.checksums
    assert report.problem.kind == "decoded" and report.problem.rows == (2, 4) and report.problem.cols == (0, 4)
    assert "no stored checksums" in report.summary()


def test_without_checksums_a_clean_file_passes_and_says_so(tmp_path):
    data = cube()
    path = write(tmp_path, data)
    _drop_checksums(path)
    report = verify(path, against=ArraySource(data))
    assert report.ok and not report.checksums and "no stored checksums" in report.summary()


def test_a_wrong_raw_checksum_is_named_as_a_decoding_problem(tmp_path):
    path = write(tmp_path, cube())
    with h5py.File(path, "r+") as f:
        group = f[checksum_group_path(EMD_DATA_PATH)]
        raw = group.attrs["raw_crc"]
        raw[3, 0, 0, 0] ^= 1
        group.attrs["raw_crc"] = raw
    report = verify(path)
    assert report.problem.kind == "decoded" and report.problem.chunk == (3, 0, 0, 0)
    assert report.problem.rows == (6, 8) and "decoded" in report.problem.reason


def test_a_different_source_is_named_by_its_first_differing_position(tmp_path):
    data = cube()
    path = write(tmp_path, data)
    other = data.copy()
    other[5, 3, 7, 9] += 1
    other[6, 0, 0, 0] += 1
    report = verify(path, against=ArraySource(other, name="other"))
    assert not report.ok and report.problem.kind == "differs"
    assert (report.problem.rows, report.problem.cols) == ((5, 6), (3, 4))
    assert "scan position (5, 3)" in report.summary() and "detector pixel (7, 9)" in report.summary()
    value = int(data[5, 3, 7, 9])
    assert f"is {value} in the file, {value + 1} in the source" in report.problem.reason
    assert report.chunks_checked < report.chunks_total


def test_a_source_of_another_shape_or_dtype_is_refused_in_the_report(tmp_path):
    data = cube()
    path = write(tmp_path, data)
    report = verify(path, against=ArraySource(data[:4]))
    assert report.problem.kind == "shape" and "(4, 6, 16, 16)" in report.problem.reason
    assert verify(path, against=ArraySource(data.astype(np.int32))).problem.kind == "shape"


def test_comparison_is_by_bit_pattern_so_nan_is_nan_and_signed_zero_counts(tmp_path):
    data = cube("float32")
    data[1, 1, 2, 3] = np.nan
    data[2, 2, 0, 0] = -0.0
    path = write(tmp_path, data, "zstd_3")
    assert verify(path, against=ArraySource(data.copy())).ok
    positive = data.copy()
    positive[2, 2, 0, 0] = 0.0
    assert verify(path, against=ArraySource(positive)).problem.rows == (2, 3)
    payload = data.copy()
    payload.view(np.uint32)[1, 1, 2, 3] ^= 1  # still NaN, another payload
    assert np.isnan(payload[1, 1, 2, 3])
    assert verify(path, against=ArraySource(payload)).problem.cols == (1, 2)


def test_a_foreign_file_decodes_in_parallel_from_its_filter_pipeline(tmp_path):
    path = real_file("smoke_test.emd")  # the study's own writer: gzip level 4, no stempress attributes or checksums
    with h5py.File(path, "r") as f:
        data = f["version_1/data/datacubes/datacube_000/data"][()]
    report = verify(path, against=ArraySource(data))
    assert report.ok and not report.checksums and report.direct and report.chunks_checked == report.chunks_total
    assert report.codec == "deflate(level=4)"


def test_missing_unreadable_and_cubeless_files_are_one_line_errors(tmp_path):
    with pytest.raises(StempressError, match="no such file"):
        verify(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(StempressError, match="not a readable HDF5 file"):
        verify(junk)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f["x"] = np.zeros((3, 3))
    with pytest.raises(StempressError, match="no 4-D dataset"):
        verify(empty)
    path = write(tmp_path, cube())
    with pytest.raises(StempressError, match="does not exist"):
        verify(path, dataset="/nowhere")


# ---------------------------------------------------------------- what verify could and could not check


def test_without_checksums_or_a_source_a_file_that_decodes_is_not_called_ok(tmp_path):
    data = cube()
    path = write(tmp_path, data, "none")  # uncompressed chunks: a flipped byte still decodes
    _drop_checksums(path)
    flip_byte_in_chunk(path, (1, 0, 0, 0))
    report = verify(path)
    assert report.ok and not report.verified  # nothing found wrong, and nothing proved it right
    assert report.summary().endswith(": decoded, not verified (no checksums; pass --against)")
    assert "OK" not in report.summary()
    compared = verify(path, against=ArraySource(data))
    assert compared.problem.kind == "differs" and 2 <= compared.problem.rows[0] < 4  # in the flipped chunk


def test_a_source_cut_into_another_scan_names_scan_shape_and_no_chunk_count(tmp_path):
    data = cube()
    path = write(tmp_path, data)
    report = verify(path, against=ArraySource(data.reshape(6, 8, 16, 16), name="stack"))
    assert report.problem.kind == "shape" and "--scan-shape 8x6" in report.problem.reason
    assert "chunks checked" not in report.summary() and "FAILED before any chunk was read" in report.summary()
    other = verify(path, against=ArraySource(np.zeros((8, 6, 8, 8), np.uint16)))
    assert "--scan-shape" not in other.problem.reason and "compare with the source it came from" in other.problem.reason


@pytest.mark.parametrize("name", ["ev.toml", "ev.h5"])
def test_event_files_are_verified_chunk_by_chunk_and_a_flipped_byte_is_named(tmp_path, name):
    from stempress.events import raw_csr_files, write_raw_csr, write_stempy

    data = cube("uint8")
    writer = write_raw_csr if name.endswith(".toml") else write_stempy
    path = writer(ArraySource(data), tmp_path / name)
    report = verify(path)
    assert report.ok and report.verified and report.checksums and report.unit == "chunks"
    assert report.chunks_checked == report.chunks_total == 8  # one chunk per scan row
    assert report.summary().endswith(": OK") and "stored crc" in report.summary()
    assert verify(path, against=ArraySource(data)).ok
    # corrupt rows 2 and 5: every bad chunk is counted, the first is named by its scan row
    if name.endswith(".toml"):
        target, offsets = raw_csr_files(path)["data"], []
        indptr = np.fromfile(raw_csr_files(path)["indptr"], "<i8")
        offsets = [int(indptr[2 * 6]), int(indptr[5 * 6])]  # the first value of rows 2 and 5 (uint8: 1 byte each)
    else:
        with h5py.File(path, "r") as f:
            entries = f["electron_events/frames"][()]
        blob = path.read_bytes()
        k = len(entries) // 48
        target = path
        firsts = [entries[r * 6 * k].astype("<u4").tobytes() for r in (2, 5)]  # frame 0 of each row's first position
        assert all(blob.count(first) == 1 for first in firsts)
        offsets = [blob.index(first) for first in firsts]
    for at in offsets:
        flip_byte(target, at, 1)
    report = verify(path)
    assert not report.ok and report.bad_chunks == 2 and report.problem.kind == "stored"
    assert report.problem.rows == (2, 3) and "FAILED at scan row 2, columns 0-5 (chunk (2,))" in report.summary()


def test_a_valid_mib_is_decoded_not_called_corrupt(tmp_path):
    mib = real_file("001_4x2_6bit.mib")
    report = verify(mib)
    assert report.ok and not report.verified and report.codec == "mib" and report.chunks_checked == 2
    assert "no stored checksums (mib files carry none)" in report.summary()
    assert "not verified (no checksums; pass --against)" in report.summary()
    from stempress.data.open import open_source

    with open_source(mib) as source:
        stored = compress(source, tmp_path / "m.h5", chunks=(1, 4, 256, 256), workers=1).path
        assert verify(mib, against=ArraySource(source.read_rows(0, 2))).verified
    with open_source(stored) as back:
        assert verify(mib, against=back).summary().endswith("compared bit-exact with the source: OK")


def test_an_entropy_coded_file_is_decoded_and_compared(tmp_path):
    from stempress.events.entropy_file import write_entropy_events

    data = cube("uint8")
    path = write_entropy_events(ArraySource(data), tmp_path / "ev.h5")
    report = verify(path)
    assert report.ok and report.codec == "entropy_poisson" and report.chunks_checked == report.chunks_total == 8
    assert report.unit == "scan rows" and ("not verified" in report.summary()) != report.checksums
    assert verify(path, against=ArraySource(data)).summary().endswith("compared bit-exact with the source: OK")
    other = data.copy()
    other[6, 2, 3, 4] += 1
    differs = verify(path, against=ArraySource(other))
    assert differs.problem.kind == "differs" and "scan position (6, 2)" in differs.summary()


def test_a_flipped_byte_in_an_entropy_coded_file_is_reported(tmp_path):
    from stempress.events.entropy_file import write_entropy_events

    data = cube("uint8")
    path = write_entropy_events(ArraySource(data), tmp_path / "ev.h5")
    with h5py.File(path, "r") as f:
        words = f["chunks/words"]
        at = words.id.get_offset() + words.nbytes // 2
    flip_byte(path, at, 0x10)
    report = verify(path)
    assert not report.ok and report.problem.kind in ("stored", "decoded") and report.problem.rows is not None


def test_verify_on_the_command_line_covers_event_files(tmp_path):
    import subprocess
    import sys

    from stempress.events import raw_csr_files, write_raw_csr

    path = write_raw_csr(ArraySource(cube("uint8")), tmp_path / "ev.toml")
    run = [sys.executable, "-m", "stempress", "verify", str(path)]
    ok = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "(raw_csr)" in ok.stdout and ok.stdout.strip().endswith("OK"), ok.stderr
    indices = raw_csr_files(path)["indices"]
    flip_byte(indices, indices.stat().st_size - 4, 1)  # the last position's last pixel index
    bad = subprocess.run(run, capture_output=True, text=True, timeout=300)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 1 and len(lines) == 1 and "FAILED at scan row 7" in lines[0], bad.stderr


def test_hyperspys_nexus_reader_shows_the_cube_not_the_checksums(tmp_path):
    """RosettaSciIO's NeXus reader (``hs.load(path, file_format="nexus")``) lists every array dataset as a signal;
    the chunk checksums are attributes, so only the cube is listed (here the 4 x 2 grid's 8 CRCs would be)."""
    from rsciio.nexus import file_reader

    data = cube()
    for layout in ("plain", "emd"):
        path = compress(ArraySource(data), tmp_path / f"{layout}.h5", codec="gzip_6", chunks=CHUNKS, workers=2,
                        layout=layout).path
        titles = [s["metadata"]["General"]["title"] for s in file_reader(str(path))]
        assert not [t for t in titles if "stempress" in t], titles
        cubes = [s for s in file_reader(str(path)) if np.shape(s["data"]) == SHAPE]
        assert len(cubes) == 1 and np.array_equal(cubes[0]["data"], data)
        assert verify(path, against=ArraySource(data)).checksums


def test_files_with_checksums_as_datasets_still_verify(tmp_path):
    """Files written before the checksums became attributes hold them as datasets of the same group."""
    data = cube()
    path = write(tmp_path, data)
    with h5py.File(path, "r+") as f:
        group = f[checksum_group_path(EMD_DATA_PATH)]
        for key in ("stored_crc", "raw_crc"):
            values = group.attrs[key]
            del group.attrs[key]
            group.create_dataset(key, data=values)
    assert verify(path, against=ArraySource(data)).checksums
    flip_byte_in_chunk(path, (1, 1, 0, 0))
    report = verify(path)
    assert report.problem.kind == "stored" and report.problem.chunk == (1, 1, 0, 0)


# -- the checks are engine sinks ---------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 3])
def test_the_reference_check_is_a_sink_that_stops_at_the_first_difference_on_any_executor(workers):
    from stempress.engine import run
    from stempress.exec.local import InlineExecutor, ThreadExecutor
    from stempress.sinks.reference import CheckFailed, ReferenceCheckSink

    data = cube()
    altered = data.copy()
    altered[5, 3, 2, 7] += 1
    altered[7, 0, 0, 0] += 1  # a later difference: the first by scan position is the one reported
    with ThreadExecutor(workers) if workers > 1 else InlineExecutor() as executor:
        assert run(ArraySource(data), [ReferenceCheckSink(ArraySource(data.copy()))], executor=executor,
                   rows=1) == [SHAPE[0]]
        with pytest.raises(CheckFailed, match=r"scan position \(5, 3\): .* detector pixel \(2, 7\)") as failed:
            run(ArraySource(data), [ReferenceCheckSink(ArraySource(altered))], executor=executor, rows=1)
    assert failed.value.problem.kind == "differs" and failed.value.problem.rows == (5, 6)


def test_the_decoded_crc_check_is_a_sink_run_over_the_stored_file(tmp_path):
    """What verify runs: the stored cube's chunks, decoded, against the CRCs recorded when they were written."""
    from stempress.data.checksums import ChunkChecksums
    from stempress.data.open import open_source
    from stempress.engine import run
    from stempress.sinks.reference import CheckFailed, DecodedCheckSink

    path = write(tmp_path, cube())
    with h5py.File(path, "r") as f:
        record = ChunkChecksums.load(f, EMD_DATA_PATH)
    with open_source(path) as stored:
        assert run(stored, [DecodedCheckSink(record, CHUNKS)]) == [SHAPE[0]]
    wrong = cube()
    wrong[6, 5, 0, 0] += 1  # chunk (3, 1, 0, 0) of the grid
    with pytest.raises(CheckFailed, match=r"scan rows 6-7, columns 4-5 \(chunk \(3, 1, 0, 0\)\): decoded data"):
        run(ArraySource(wrong), [DecodedCheckSink(record, CHUNKS)])


def test_verify_runs_its_checks_on_the_callers_executor(tmp_path):
    from stempress.exec.local import InlineExecutor, ThreadExecutor

    data = cube()
    path = write(tmp_path, data)
    altered = data.copy()
    altered[3, 1, 4, 4] ^= 1
    for executor in (InlineExecutor(), ThreadExecutor(2)):
        with executor:
            assert verify(path, against=ArraySource(data), executor=executor).verified
            report = verify(path, against=ArraySource(altered), executor=executor)
        assert report.problem.kind == "differs" and report.problem.where() == "scan position (3, 1)"


def test_an_event_file_verified_on_worker_processes_gives_the_inline_report(tmp_path):
    """Any remote executor, not only Dask: the processes reopen the file and check partitions of its rows."""
    from dataclasses import replace

    from stempress.events import raw_csr_files, write_raw_csr
    from stempress.exec.processes import ProcessExecutor

    path = write_raw_csr(ArraySource(cube("uint8")), tmp_path / "ev.toml")
    indptr = np.fromfile(raw_csr_files(path)["indptr"], "<i8")
    for row in (4, 6):
        flip_byte(raw_csr_files(path)["data"], int(indptr[row * 6]), 1)
    inline = verify(path)
    with ProcessExecutor(2) as executor:
        on_workers = verify(path, executor=executor)
    assert replace(inline, seconds=0) == replace(on_workers, seconds=0)
    assert on_workers.bad_chunks == 2 and on_workers.problem.rows == (4, 5) and on_workers.note is None
