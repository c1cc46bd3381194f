"""Every user-caused problem with a source is one StempressError line naming the problem and the fix."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from real_data import real_file
from stempress.data import Hdf5Source, MibSource, NpySource, NxmxSource, open_source
from stempress.errors import StempressError


def message(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, "error messages must be one line"
    return text


def cube_file(path: Path, **datasets: tuple[tuple[int, ...], str]) -> Path:
    with h5py.File(path, "w") as f:
        for name, (shape, dtype) in datasets.items():
            f.create_dataset(name.replace("__", "/"), shape=shape, dtype=dtype)
    return path


# --- missing, truncated, not HDF5 ---------------------------------------------------------------------


@pytest.mark.parametrize("opener", [open_source, Hdf5Source, NxmxSource, MibSource, NpySource])
def test_missing_file(tmp_path, opener):
    with pytest.raises(StempressError) as excinfo:
        opener(tmp_path / "nope.h5")
    assert "no such file" in message(excinfo) and "nope.h5" in message(excinfo)


@pytest.mark.parametrize("name", ["smoke_test.emd", "py4DSTEM_size2x3x4x5.h5"])
def test_truncated_hdf5(tmp_path, name):
    path = tmp_path / name
    shutil.copyfile(real_file(name), path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(StempressError) as excinfo:
        open_source(path)
    assert "not a readable HDF5 file (truncated or corrupt" in message(excinfo)


def test_not_hdf5_at_all(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_text("hello")
    with pytest.raises(StempressError, match="not a readable HDF5 file"):
        open_source(path)


def test_unknown_suffix_and_directory(tmp_path):
    path = tmp_path / "cube.xyz"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(StempressError) as excinfo:
        open_source(path)
    assert ".mib" in message(excinfo) and ".npy" in message(excinfo) and ".emd" in message(excinfo)
    with pytest.raises(StempressError, match="is a directory"):
        open_source(tmp_path)


def test_synthetic_module_missing(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "stempress.data.synthetic", None)
    with pytest.raises(StempressError) as excinfo:
        open_source("synthetic:smoke")
    assert "synthetic" in message(excinfo)


# --- choosing the dataset -----------------------------------------------------------------------------


def test_ambiguous_4d_datasets(tmp_path):
    path = cube_file(tmp_path / "two.h5", a=((2, 2, 4, 4), "u2"), g__b=((3, 2, 4, 4), "u2"))
    with pytest.raises(StempressError) as excinfo:
        open_source(path)
    text = message(excinfo)
    assert "/a" in text and "/g/b" in text and "--dataset" in text


def test_no_4d_dataset_lists_what_exists(tmp_path):
    path = cube_file(tmp_path / "flat.h5", img=((8, 8), "f4"), stack=((4, 8, 8), "u2"))
    with pytest.raises(StempressError) as excinfo:
        open_source(path)
    text = message(excinfo)
    assert "no 4-D dataset" in text and "/img (8, 8)" in text and "/stack (4, 8, 8)" in text
    assert "--scan-shape" in text


def test_file_without_datasets():
    with pytest.raises(StempressError, match="holds no datasets"):
        open_source(real_file("test_00.h5"))  # the ARINA scan sidecar: attributes only


def test_wrong_dataset_path(tmp_path):
    path = cube_file(tmp_path / "one.h5", g__cube=((2, 2, 4, 4), "u2"))
    with pytest.raises(StempressError) as excinfo:
        open_source(path, dataset="/g/missing")
    text = message(excinfo)
    assert "'/g/missing' does not exist" in text and "/g/cube (2, 2, 4, 4)" in text
    with pytest.raises(StempressError, match="is a group"):
        open_source(f"{path}:/g")
    with pytest.raises(StempressError, match="given twice"):
        open_source(f"{path}:/g/cube", dataset="/other")


def test_not_4d(tmp_path):
    path = cube_file(tmp_path / "stack.h5", stack=((4, 8, 8), "u2"))
    with pytest.raises(StempressError) as excinfo:
        Hdf5Source(path, "stack")
    assert "3 dimensions" in message(excinfo)


@pytest.mark.parametrize("dtype", ["c8", "bool", "f2"])
def test_unsupported_dtype(tmp_path, dtype):
    path = cube_file(tmp_path / "odd.h5", cube=((2, 2, 4, 4), dtype))
    with pytest.raises(StempressError) as excinfo:
        open_source(path)
    assert "is not supported" in message(excinfo)


def test_scan_shape_mismatch(tmp_path):
    path = cube_file(tmp_path / "cube.h5", cube=((2, 3, 4, 4), "u2"))
    with pytest.raises(StempressError, match="drop --scan-shape"):
        open_source(path, scan_shape=(3, 2))
    with pytest.raises(StempressError) as excinfo:
        open_source(real_file("test_00_data_000001.h5"), scan_shape=(3, 5))
    assert "15 positions" in message(excinfo) and "16 frames" in message(excinfo)


def test_dataset_option_on_non_hdf5():
    with pytest.raises(StempressError, match="HDF5 files only"):
        open_source(real_file("001_4x2_6bit.mib"), dataset="/data")


# --- decoding failures at read time -------------------------------------------------------------------


def test_corrupt_chunk(tmp_path):
    path = tmp_path / "corrupt.h5"
    data = np.random.default_rng(0).integers(0, 100, (4, 4, 16, 16), dtype=np.uint16)
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("cube", data=data, chunks=(1, 4, 16, 16), compression="gzip")
        info = dset.id.get_chunk_info(0)
    with open(path, "r+b") as fh:  # flip bytes inside the first stored chunk
        fh.seek(info.byte_offset + 10)
        garbage = bytes(b ^ 0xFF for b in fh.read(20))
        fh.seek(info.byte_offset + 10)
        fh.write(garbage)
    with Hdf5Source(path) as src:
        np.testing.assert_array_equal(src.read_rows(1, 4), data[1:4])  # other chunks intact
        with pytest.raises(StempressError) as excinfo:
            src.read_rows(0, 2)
    text = message(excinfo)
    assert "cannot decode chunk at rows 0..2" in text and "corrupt" in text and str(path) in text


def test_unregistered_filter(tmp_path):
    """A filter this process has no plugin for (id 45000) fails at first read, naming it and the fix."""
    path = tmp_path / "plugin.h5"
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, 2, 4, 4))
        dcpl.set_filter(45000, h5py.h5z.FLAG_OPTIONAL, (1, 2))
        space = h5py.h5s.create_simple((2, 2, 4, 4))
        dset = h5py.Dataset(h5py.h5d.create(f.id, b"cube", h5py.h5t.NATIVE_UINT16, space, dcpl=dcpl))
        for row in range(2):  # chunks stored as if filter 45000 had run
            dset.id.write_direct_chunk((row, 0, 0, 0), np.zeros(32, np.uint16).tobytes(), 0)
    with Hdf5Source(path) as src:  # opening works: metadata is readable without the plugin
        assert src.metadata["filters"][0] == {"id": 45000, "name": "filter 45000", "options": [1, 2],
                                              "available": False}
        with pytest.raises(StempressError) as excinfo:
            src.read_rows(0, 1)
    text = message(excinfo)
    assert "filter 45000" in text and "pip install hdf5plugin" in text


def test_rows_out_of_range():
    with open_source(real_file("smoke_test.emd")) as src, pytest.raises(ValueError):
        src.read_rows(3, 5)


# --- NXmx ---------------------------------------------------------------------------------------------


def test_nxmx_wrong_scan_shape():
    with pytest.raises(StempressError) as excinfo:
        open_source(real_file("test_00_master.h5"), scan_shape=(3, 5))
    text = message(excinfo)
    assert "15 positions" in text and "16 frames" in text


def test_nxmx_missing_data_file(tmp_path):
    shutil.copyfile(real_file("test_00_master.h5"), tmp_path / "test_00_master.h5")
    with pytest.raises(StempressError) as excinfo:
        open_source(tmp_path / "test_00_master.h5")
    text = message(excinfo)
    assert "test_00_data_000001.h5" in text and "next to the master" in text


def test_nxmx_not_square_needs_scan_shape(tmp_path):
    with h5py.File(tmp_path / "x_data_000001.h5", "w") as d:
        d["entry/data/data"] = np.zeros((12, 4, 4), np.uint8)
    with h5py.File(tmp_path / "x_master.h5", "w") as m:
        m["entry/data/data_000001"] = h5py.ExternalLink("x_data_000001.h5", "/entry/data/data")
    with pytest.raises(StempressError) as excinfo:
        open_source(tmp_path / "x_master.h5")
    assert "12 frames" in message(excinfo) and "--scan-shape" in message(excinfo)
    with open_source(tmp_path / "x_master.h5", scan_shape=(3, 4)) as src:
        assert src.shape == (3, 4, 4, 4)


# --- Merlin .mib --------------------------------------------------------------------------------------


def test_truncated_mib(tmp_path):
    path = tmp_path / "cut.mib"
    shutil.copyfile(real_file("001_4x2_6bit.mib"), path)
    shutil.copyfile(real_file("001_4x2_6bit.hdr"), tmp_path / "cut.hdr")
    os.truncate(path, path.stat().st_size - 1000)
    with pytest.raises(StempressError) as excinfo:
        open_source(path)
    text = message(excinfo)
    frame = 384 + 256 * 256
    assert f"{8 * frame - 1000} bytes" in text and f"expected {8 * frame} bytes for 8 frames" in text
    assert "truncated" in text


def test_mib_wrong_scan_shape():
    with pytest.raises(StempressError) as excinfo:
        MibSource(real_file("001_4x2_6bit.mib"), scan_shape=(3, 3))
    text = message(excinfo)
    assert "9 positions" in text and "8 frames" in text


def test_mib_not_a_mib_and_raw(tmp_path):
    bad = tmp_path / "bad.mib"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(StempressError, match=r"not a Merlin \.mib file"):
        open_source(bad)
    raw = tmp_path / "raw.mib"  # raw frames of a chip layout the raw decoder does not handle
    frame = real_file("001_4x2_6bit.mib").read_bytes()[: 384 + 256 * 256]
    raw.write_bytes(frame.replace(b",U08,", b",R64,", 1).replace(b",   1x1,", b",  Nx1G,", 1))
    with pytest.raises(StempressError) as excinfo:
        open_source(raw)
    assert "R64" in message(excinfo) and "not supported" in message(excinfo) and "Nx1G" in message(excinfo)


# --- npy ----------------------------------------------------------------------------------------------


def test_npy_errors(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((4, 4), np.uint8))
    with pytest.raises(StempressError, match="2 dimensions"):
        open_source(tmp_path / "img.npy")
    np.save(tmp_path / "obj.npy", np.array([[[[None]]]], dtype=object))
    with pytest.raises(StempressError, match=r"not a readable \.npy file"):
        open_source(tmp_path / "obj.npy")
    np.save(tmp_path / "cut.npy", np.zeros((4, 4, 8, 8), np.uint16))
    os.truncate(tmp_path / "cut.npy", 500)
    with pytest.raises(StempressError, match="truncated"):
        open_source(tmp_path / "cut.npy")
