"""Every real detector file reads block by block with the right shape, dtype, values and metadata."""

from __future__ import annotations

import pickle
import shutil
import sys
import types
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
from rsciio.quantumdetector import file_reader as rsciio_mib_reader

from prismatic_file import Q_STEP_PER_A, R_STEP_A, write_prismatic
from real_data import real_file
from stempress.data import (
    ArraySource,
    Dataset4D,
    Hdf5Source,
    MibSource,
    NpySource,
    NxmxSource,
    iter_blocks,
    open_source,
)


def read_all(source: Dataset4D, rows: int) -> np.ndarray:
    """The cube reassembled from blocks, checking each block's shape on the way."""
    parts = []
    for block in iter_blocks(source, rows):
        assert block.data.shape == (block.stop - block.start, *source.shape[1:])
        assert block.data.dtype == source.dtype
        parts.append(block.data)
    return np.concatenate(parts)


def check_blocks(source: Dataset4D, expected: np.ndarray) -> None:
    assert isinstance(source, Dataset4D)
    assert source.shape == expected.shape
    for rows in (1, source.shape[0]):
        np.testing.assert_array_equal(read_all(source, rows), expected)


# --- HDF5 / EMD ---------------------------------------------------------------------------------------


def test_study_emd_reads_in_blocks():
    path = real_file("smoke_test.emd")
    with h5py.File(path, "r") as f:
        expected = f["version_1/data/datacubes/datacube_000/data"][()]
    with open_source(path) as src:
        assert isinstance(src, Hdf5Source)
        assert src.dtype == np.uint16
        assert src.name == "smoke_test"
        check_blocks(src, expected)
        assert src.metadata["format"] == "emd-study"
        assert src.metadata["dataset_path"] == "/version_1/data/datacubes/datacube_000/data"
        assert src.metadata["chunks"] == [2, 2, 8, 8]
        assert [f["name"] for f in src.metadata["filters"]] == ["gzip"]
        assert src.metadata["compression"] == "gzip"


def test_emdfile_datacube_carries_calibration_and_dims():
    path = real_file("py4DSTEM_size2x3x4x5.h5")
    with h5py.File(path, "r") as f:
        expected = f["datacube_root/datacube/data"][()]
    with Hdf5Source(path) as src:
        assert src.dtype == np.float32
        check_blocks(src, expected)
        meta = src.metadata
    assert meta["format"] == "emd-emdfile"
    assert meta["dataset_path"] == "/datacube_root/datacube/data"
    cal = meta["calibration"]
    assert cal["R_pixel_size"] == pytest.approx(0.126796875)
    assert cal["Q_pixel_size"] == pytest.approx(0.044251566616087125)
    assert (cal["R_pixel_units"], cal["Q_pixel_units"], cal["QR_flip"]) == ("nm", "A^-1", False)
    assert [d["name"] for d in meta["dims"]] == ["Rx", "Ry", "Qx", "Qy"]
    assert [d["units"] for d in meta["dims"]] == ["nm", "nm", "A^-1", "A^-1"]
    assert meta["dims"][0]["values"] == pytest.approx([0.0, 0.126796875])
    assert meta["emd"]["authoring_program"] == "emdfile"


def test_named_dataset_and_colon_spec(tmp_path):
    path = tmp_path / "two.h5"
    rng = np.random.default_rng(1)
    a = rng.integers(0, 50, (3, 2, 4, 4), dtype=np.uint16)
    b = rng.integers(0, 50, (2, 2, 4, 4), dtype=np.int32)
    with h5py.File(path, "w") as f:
        f["g/a"] = a
        f.create_dataset("g/b", data=b, chunks=(1, 2, 4, 4), **hdf5plugin.Blosc(cname="zstd"))
    with open_source(f"{path}:/g/b") as src:
        check_blocks(src, b)
        assert src.metadata["dataset_path"] == "/g/b"
        assert src.metadata["filters"][0]["id"] == 32001
    with open_source(path, dataset="g/a") as src:
        check_blocks(src, a)
        assert src.metadata["format"] == "hdf5"


def test_big_endian_dataset_is_read_native(tmp_path):
    path = tmp_path / "be.h5"
    data = np.arange(2 * 3 * 4 * 4, dtype=">u2").reshape(2, 3, 4, 4)
    with h5py.File(path, "w") as f:
        f.create_dataset("cube", data=data)
    with Hdf5Source(path) as src:
        assert src.dtype == np.dtype("uint16") and src.dtype.isnative
        block = src.read_rows(0, 2)
    assert block.dtype.isnative
    np.testing.assert_array_equal(block, data.astype(np.uint16))


def test_hdf5_frame_stack_with_scan_shape():
    path = real_file("test_00_data_000001.h5")
    with h5py.File(path, "r") as f:
        frames = f["entry/data/data"][()]
    with open_source(path, scan_shape=(2, 8)) as src:
        assert src.metadata["frame_stack"] is True
        check_blocks(src, frames.reshape(2, 8, 192, 192))


# --- NXmx ---------------------------------------------------------------------------------------------


def test_nxmx_master_reads_like_its_data_file():
    master = real_file("test_00_master.h5")
    with h5py.File(real_file("test_00_data_000001.h5"), "r") as f:
        frames = f["entry/data/data"][()]
    with open_source(master) as src:
        assert isinstance(src, NxmxSource)
        assert src.name == "test_00"
        assert src.dtype == np.uint32
        check_blocks(src, frames.reshape(4, 4, 192, 192))
        meta = src.metadata
        assert src.pixel_mask().shape == (192, 192)
    # the ARINA scan sidecar test_00.h5 says 4x4
    assert meta["scan_shape_source"] == "sidecar test_00.h5"
    assert meta["scan_shape_inferred"] is False
    assert meta["scan_metadata"]["NumPixelsX"] == 4
    det = meta["detector"]
    assert det["count_time"] == pytest.approx(9.95e-05)
    assert det["frame_time"] == pytest.approx(9.96e-05)
    assert det["x_pixel_size"] == pytest.approx(1e-4)
    assert (det["nimages"], det["ntrigger"]) == (1, 16)
    assert "beam_center_x" in det and "beam_center_y" in det
    assert det["description"] == "Dectris ARINA CZT"
    assert meta["detector_units"]["count_time"] == "s"
    assert meta["filters"][0]["id"] == 32008



def test_arina_camera_length_energy_and_pixel_size_become_a_calibration():
    """100 um pixels at the sidecar's 0.115 m camera length: 0.8696 mrad per pixel; 300 kV: lambda 0.01969 A;
    the scan's Pixel Size in nm, as RosettaSciIO and py4DSTEM read it (they give it x10 in A)."""
    with open_source(real_file("test_00_master.h5")) as src:
        cal = src.metadata["calibration"]
    assert (cal["Q_pixel_units"], cal["R_pixel_units"]) == ("mrad", "nm")
    assert cal["Q_pixel_size"] == pytest.approx(1e3 * 1e-4 / 0.115)
    assert cal["camera_length_m"] == 0.115 and cal["camera_length_from"] == "sidecar Camera Length"
    assert cal["beam_energy_eV"] == 300e3 and cal["wavelength_A"] == pytest.approx(0.019687, rel=1e-4)
    with h5py.File(real_file("test_00.h5"), "r") as f:
        assert cal["R_pixel_size"] == pytest.approx(f["STEM Metadata"].attrs["Pixel Size"][0])
    calibration = source_calibration_of(real_file("test_00_master.h5"))
    assert calibration.angular and calibration.q_pixel_size == pytest.approx(cal["Q_pixel_size"])


def source_calibration_of(path: Path):
    from stempress.reduce.calibration import Calibration

    with open_source(path) as src:
        return Calibration.from_metadata(src.metadata, src.shape[2:])


def test_nxmx_detector_distance_wins_over_the_sidecar(tmp_path):
    for name in ("test_00_master.h5", "test_00_data_000001.h5", "test_00.h5"):
        shutil.copyfile(real_file(name), tmp_path / name)
    with h5py.File(tmp_path / "test_00_master.h5", "r+") as f:
        f["entry/instrument/detector/detector_distance"][()] = 0.2
        f["entry/instrument/detector/x_pixel_size"][()] = 55e-6
        f["entry/instrument/detector/y_pixel_size"][()] = 55e-6
    with open_source(tmp_path / "test_00_master.h5") as src:
        cal = src.metadata["calibration"]
    assert cal["Q_pixel_size"] == pytest.approx(1e3 * 55e-6 / 0.2) and cal["camera_length_from"] == "detector_distance"


def test_prismatic_dims_become_the_calibration(tmp_path):
    """Prismatic's Si100-like sampling (5 A probe steps, 0.0184 A^-1 pixels) read from its dim vectors, not 1 px."""
    cube = np.random.default_rng(1).random((4, 3, 8, 6)).astype(np.float32)
    path = write_prismatic(tmp_path / "si100.h5", cube)
    with open_source(path) as src:
        assert isinstance(src, Hdf5Source) and src.metadata["format"] == "emd-prismatic"
        assert src.metadata["dataset_path"] == "/4DSTEM_simulation/data/datacubes/CBED_array_depth0000/data"
        check_blocks(src, cube)  # (Rx, Ry, Qx, Qy) as stored, as py4DSTEM's DataCube orders it
        cal = src.metadata["calibration"]
        assert [d["name"] for d in src.metadata["dims"]] == ["R_x", "R_y", "Q_x", "Q_y"]
        assert src.metadata["simulation_parameters"]["E"] == 300.0
    assert cal == {"R_pixel_size": R_STEP_A, "R_pixel_units": "A", "Q_pixel_size": Q_STEP_PER_A,
                   "Q_pixel_units": "A^-1"}


def test_dims_that_are_not_one_linear_step_leave_that_space_in_pixels(tmp_path):
    cube = np.zeros((4, 3, 8, 6), np.float32)
    path = write_prismatic(tmp_path / "p.h5", cube)
    with h5py.File(path, "r+") as f:
        f["4DSTEM_simulation/data/datacubes/CBED_array_depth0000/dim2"][...] = [0, 1, 5]  # R_y not linear
    with open_source(path) as src:
        assert src.metadata["calibration"] == {"Q_pixel_size": Q_STEP_PER_A, "Q_pixel_units": "A^-1"}

def test_nxmx_user_scan_shape_and_square_inference(tmp_path):
    with NxmxSource(real_file("test_00_master.h5"), scan_shape=(2, 8)) as src:
        assert src.shape == (2, 8, 192, 192)
        assert src.metadata["scan_shape_source"] == "user"
    for name in ("test_00_master.h5", "test_00_data_000001.h5"):  # no scan sidecar beside them
        shutil.copyfile(real_file(name), tmp_path / name)
    with NxmxSource(tmp_path / "test_00_master.h5") as src:
        assert src.shape == (4, 4, 192, 192)
        assert src.metadata["scan_shape_inferred"] is True
        assert src.metadata["scan_shape_source"] == "square"


def write_nxmx(folder: Path, counts: list[int], det: int = 6) -> tuple[Path, np.ndarray]:
    """A two-file Dectris-style acquisition with Bitshuffle+LZ4, one frame per chunk, distinct frames."""
    total = sum(counts)
    frames = np.arange(total * det * det, dtype=np.uint16).reshape(total, det, det)
    master = folder / "scan_master.h5"
    with h5py.File(master, "w") as m:
        data = m.create_group("entry/data")
        data.attrs["NX_class"] = "NXdata"
        detector = m.create_group("entry/instrument/detector")
        detector["count_time"] = 0.001
        detector["count_time"].attrs["units"] = "s"
        detector.create_group("detectorSpecific")["nimages"] = np.uint64(total)
        first = 0
        for i, n in enumerate(counts, start=1):
            name = f"scan_data_{i:06d}.h5"
            with h5py.File(folder / name, "w") as d:
                d.create_dataset("entry/data/data", data=frames[first:first + n], chunks=(1, det, det),
                                 **hdf5plugin.Bitshuffle(cname="lz4"))
            data[f"data_{i:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
            first += n
    return master, frames


def test_nxmx_rows_span_two_data_files(tmp_path):
    master, frames = write_nxmx(tmp_path, [5, 7])
    with open_source(master, scan_shape=(3, 4)) as src:
        assert isinstance(src, NxmxSource)
        assert src.metadata["n_frames"] == 12
        assert len(src.metadata["data_files"]) == 2
        assert src.metadata["detector"] == {"count_time": 0.001, "nimages": 12}
        # row 1 = frames 4..7: one frame from the first file, three from the second
        np.testing.assert_array_equal(src.read_rows(1, 2)[0], frames[4:8])
        check_blocks(src, frames.reshape(3, 4, 6, 6))


# --- Merlin .mib --------------------------------------------------------------------------------------


MIB_FILES = [("001_4x2_6bit.mib", (256, 256)), ("002_4x2_6bit_roi128.mib", (128, 256))]


@pytest.mark.parametrize(("name", "det"), MIB_FILES)
def test_mib_matches_rosettasciio(name, det):
    path = real_file(name)
    # RosettaSciIO's tests read these as navigation (x, y) = (4, 2): 2 scan rows of 4
    reference = rsciio_mib_reader(str(path), navigation_shape=(4, 2))[0]["data"]
    assert reference.shape == (2, 4, *det)
    with open_source(path) as src:
        assert isinstance(src, MibSource)
        assert src.dtype == np.uint8
        check_blocks(src, reference)  # the frames HyperSpy and pyxem show, row for row
        meta = src.metadata
    assert meta["scan_shape_inferred"] is True
    assert meta["scan_shape_source"] == "frame timestamps"
    assert (meta["pixel_type"], meta["counter_depth"], meta["chip_layout"]) == ("U08", 6, "1x1")
    assert meta["header_bytes"] == 384
    assert meta["exposure_ms"] == pytest.approx(100.0)
    assert meta["hdr"]["Counter Depth (number)"] == "6"
    assert meta["det_y_flipped"] is True and meta["orientation"].startswith("RosettaSciIO")
    with MibSource(path, flip_det_y=False) as stored:
        check_blocks(stored, np.flip(reference, axis=-2))
        assert stored.metadata["det_y_flipped"] is False


@pytest.mark.parametrize(("name", "det"), MIB_FILES)
def test_mib_orientation_is_the_stored_rows_upside_down(name, det):
    """Pinned without any reader: frame 0's first stored row (right after its 384-byte header) is our last."""
    raw = np.frombuffer(real_file(name).read_bytes(), np.uint8, count=det[0] * det[1], offset=384).reshape(det)
    with open_source(real_file(name)) as src:
        first = src.read_rows(0, 1)[0, 0]
    assert not np.array_equal(raw, raw[::-1])  # the test can tell the two orientations apart
    np.testing.assert_array_equal(first, raw[::-1])


@pytest.mark.parametrize(("name", "det"), MIB_FILES)
def test_libertem_keeps_the_stored_mib_order(name, det):
    """LiberTEM 0.16 reads the same file in the stored order: its frames are ours flipped along det_y."""
    api = pytest.importorskip("libertem.api", reason="LiberTEM is not installed here")
    from libertem.udf.raw import PickUDF

    with open_source(real_file(name)) as src:
        ours = src.read_rows(0, src.shape[0])
    with api.Context.make_with("inline") as ctx:
        dataset = ctx.load("mib", path=str(real_file(name)), nav_shape=ours.shape[:2])
        picked = ctx.run_udf(dataset=dataset, udf=PickUDF(), roi=np.ones(ours.shape[:2], bool))["intensity"].data
    np.testing.assert_array_equal(np.asarray(picked).reshape(ours.shape), np.flip(ours, axis=-2))


def test_mib_user_scan_shape():
    path = real_file("001_4x2_6bit.mib")
    with MibSource(path, (1, 8)) as src:
        assert src.shape == (1, 8, 256, 256)
        assert src.metadata["scan_shape_inferred"] is False
        row = src.read_rows(0, 1)
    with MibSource(path) as src:
        np.testing.assert_array_equal(row.reshape(2, 4, 256, 256), src.read_rows(0, 2))


def test_mib_without_hdr_or_timestamps_falls_back(tmp_path):
    path = tmp_path / "copy.mib"
    shutil.copyfile(real_file("001_4x2_6bit.mib"), path)  # no .hdr beside it: timestamps still give 2x4
    with MibSource(path) as src:
        assert src.shape[:2] == (2, 4)
        assert "hdr" not in src.metadata
    raw = bytearray(path.read_bytes())
    frame = 384 + 256 * 256
    for i in range(8):  # equal timestamps: no line structure left, 8 is not square -> one row
        stamp = raw.index(b"MQ1A,", i * frame) + 5
        raw[stamp:stamp + 30] = b"2021-05-07T16:51:10.905800928Z"
    path.write_bytes(bytes(raw))
    with MibSource(path) as src:
        assert src.shape[:2] == (1, 8)
        assert src.metadata["scan_shape_source"] == "single row"


# --- npy, arrays, dispatch ----------------------------------------------------------------------------


def test_npy_is_memory_mapped_and_native(tmp_path):
    data = np.arange(3 * 2 * 4 * 5, dtype=">i4").reshape(3, 2, 4, 5)
    np.save(tmp_path / "cube.npy", data)
    with open_source(tmp_path / "cube.npy") as src:
        assert isinstance(src, NpySource)
        assert isinstance(src._array, np.memmap)
        assert src.dtype == np.int32 and src.dtype.isnative
        check_blocks(src, data.astype(np.int32))


def test_npy_fortran_frame_stack(tmp_path):
    frames = np.asfortranarray(np.arange(6 * 4 * 4, dtype=np.uint16).reshape(6, 4, 4))
    np.save(tmp_path / "stack.npy", frames)
    with NpySource(tmp_path / "stack.npy", scan_shape=(2, 3)) as src:
        assert src.metadata["fortran_order"] is True
        check_blocks(src, np.ascontiguousarray(frames).reshape(2, 3, 4, 4))


def test_ndarray_and_sniffed_suffix(tmp_path):
    cube = np.ones((2, 2, 3, 3), np.float32)
    assert isinstance(open_source(cube), ArraySource)
    odd = tmp_path / "cube.dat"
    shutil.copyfile(real_file("smoke_test.emd"), odd)
    with open_source(odd) as src:
        assert isinstance(src, Hdf5Source) and src.shape == (4, 4, 16, 16)
    odd_mib = tmp_path / "frames.raw"
    shutil.copyfile(real_file("001_4x2_6bit.mib"), odd_mib)
    with open_source(odd_mib, scan_shape=(4, 2)) as src:
        assert isinstance(src, MibSource) and src.shape == (4, 2, 256, 256)


def test_synthetic_hook_dispatches_lazily(monkeypatch):
    calls = []
    fake = types.ModuleType("stempress.data.suites")
    fake.open_synthetic = lambda spec: calls.append(spec) or ArraySource(np.zeros((1, 1, 2, 2), np.uint8))
    monkeypatch.setitem(sys.modules, "stempress.data.suites", fake)
    src = open_source("synthetic:smoke")
    assert calls == ["synthetic:smoke"] and src.shape == (1, 1, 2, 2)


@pytest.mark.parametrize("name", ["smoke_test.emd", "test_00_master.h5", "001_4x2_6bit.mib"])
def test_sources_pickle_by_reopening(name):
    with open_source(real_file(name)) as src:
        clone = pickle.loads(pickle.dumps(src))
        try:
            assert type(clone) is type(src) and clone.shape == src.shape
            np.testing.assert_array_equal(clone.read_rows(0, 1), src.read_rows(0, 1))
        finally:
            clone.close()


def test_a_written_cube_keeps_its_calibration(tmp_path):
    """write_hdf5 stores the pixel sizes in the EMD calibration; reading the file gives them back (mrad, nm)."""
    from stempress.data.suites import open_synthetic
    from stempress.store.reducing import source_calibration
    from stempress.store.write import write_hdf5

    spec = "synthetic:diffraction?scan=4x4&det=32x32"
    with open_synthetic(spec) as synthetic:
        write_hdf5(synthetic, tmp_path / "c.h5")
        expected = synthetic.metadata
    with Hdf5Source(tmp_path / "c.h5") as source:
        for key in ("Q_pixel_size", "Q_pixel_units", "R_pixel_size", "R_pixel_units"):
            assert source.metadata["calibration"][key] == expected[key]
        calibration = source_calibration(source)
    assert calibration.q_units == "mrad" and calibration.q_pixel_size == pytest.approx(expected["Q_pixel_size"])
