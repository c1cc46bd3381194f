"""The reduced file: our reader round-trips every array exactly, HyperSpy's hspy reader sees each output with
calibrated axes, the EMD tree has what emdfile/py4DSTEM read, the provenance is complete, writes are atomic."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from rsciio.hspy import file_reader

from stempress.data.open import open_source
from stempress.errors import StempressError
from stempress.reduce.imaging import radius_map
from stempress.reduce.output import (
    EMD_ROOT,
    HSPY_GROUP,
    PROVENANCE_ATTR,
    REDUCED_GROUP,
    read_reduced,
    reduced_calibration,
)
from stempress.reduce.sufficiency import parse_targets
from stempress.sinks import reduced as reduced_sink
from stempress.store.compress import compress
from stempress.store.reduced import reduce_to_file
from stempress.store.reducing import compute, run_reducers, source_calibration

SMOKE = "synthetic:smoke/4D_Diff"
TARGETS = ["bf", "adf:inner=1.1,outer=3", "com", "mean_pattern", "radial:bins=16"]


@pytest.fixture(scope="module")
def source_file(tmp_path_factory) -> Path:
    """The smoke cube in a calibrated EMD file (0.5 nm scan steps, mrad detector pixels), so the provenance has
    a path and a file checksum to record."""
    return compress(open_source(SMOKE), tmp_path_factory.mktemp("src") / "cube.emd", codec="gzip_1").path


@pytest.fixture(scope="module")
def reduced(source_file, tmp_path_factory) -> Path:
    with open_source(str(source_file)) as source:
        return reduce_to_file(source, TARGETS, tmp_path_factory.mktemp("out") / "reduced.h5")


@pytest.fixture(scope="module")
def expected(source_file):
    """The same targets computed independently of the file (the sufficiency checks' path)."""
    with open_source(str(source_file)) as source:
        cal = source_calibration(source)
        return compute(parse_targets(TARGETS), source, cal), cal


def test_read_reduced_round_trips_every_array_exactly(reduced, expected):
    want, _ = expected
    results, _ = read_reduced(reduced)
    assert list(results) == [t.label for t in parse_targets(TARGETS)]  # in the order given
    assert list(results["com"]) == ["com_y", "com_x"]
    for label, arrays in want.items():
        assert set(results[label]) == set(arrays), label
        for key, array in arrays.items():
            got = results[label][key]
            assert got.dtype == array.dtype and got.shape == array.shape, (label, key)
            assert np.array_equal(got, array), (label, key)


def test_provenance_records_source_checksum_parameters_calibration_versions_time(reduced, source_file, expected):
    _, cal = expected
    _, record = read_reduced(reduced)
    assert record["source"]["path"] == str(source_file)
    assert record["source"]["sha256"] == hashlib.sha256(source_file.read_bytes()).hexdigest()
    assert record["source"]["sha256_of"] == "file" and record["source"]["shape"] == [8, 8, 64, 64]
    assert record["targets"] == [t.label for t in parse_targets(TARGETS)]
    assert record["parameters"]["outputs"]["com"] == ["com_y", "com_x"]
    assert record["parameters"]["units"]["bf"] == {"BF": "counts"}
    assert reduced_calibration(record) == cal
    assert record["software"]["stempress"] and record["software"]["numpy"] == np.__version__
    assert dt.datetime.fromisoformat(record["time"]).tzinfo is not None
    with h5py.File(reduced) as f:
        assert json.loads(f.attrs[PROVENANCE_ATTR]) == record


def test_derived_scalars_are_the_reducers_unkept_zero_d_outputs(reduced, source_file):
    """Whatever scalars a target's reducer finishes with (the CoM's fitted rotation) land in the provenance."""
    with open_source(str(source_file)) as source:
        cal = source_calibration(source)
        chosen = parse_targets(TARGETS)
        results = run_reducers(source, [t.reducer(cal, name=t.label) for t in chosen])
    want = {t.label: {k: np.asarray(v).item() for k, v in results[t.label].items()
                      if k not in set(t.keys()) and np.ndim(v) == 0} for t in chosen}
    want = {label: values for label, values in want.items() if values}
    _, record = read_reduced(reduced)
    got = record["derived"]
    assert set(got) == set(want)
    for label, values in want.items():
        assert set(got[label]) == set(values)
        for key, value in values.items():
            assert got[label][key] == value or (not math.isfinite(value) and got[label][key] is None)


def _strict(constant: str) -> None:
    raise ValueError(f"non-standard JSON constant {constant}")


def test_provenance_is_strict_json_with_null_for_an_unmasked_com(source_file, tmp_path):
    """An unmasked CoM has an infinite mask radius; the provenance says null there, so any JSON parser reads it."""
    with open_source(str(source_file)) as source:
        path = reduce_to_file(source, ["com:mask_radius=inf"], tmp_path / "unmasked.h5")
    with h5py.File(path) as f:
        record = json.loads(f.attrs[PROVENANCE_ATTR], parse_constant=_strict)
    derived = record["derived"]["com:mask_radius=inf"]
    assert "mask_radius_px" in derived and derived["mask_radius_px"] is None
    results, _ = read_reduced(path)
    assert np.all(np.isfinite(results["com:mask_radius=inf"]["com_y"]))


def test_hyperspy_reader_sees_every_output_with_calibrated_axes(reduced, expected):
    _, cal = expected
    results, record = read_reduced(reduced)
    signals = {s["metadata"]["General"]["title"]: s for s in file_reader(str(reduced))}
    assert sorted(signals) == sorted(f"{label} {key}" for label, arrays in results.items() for key in arrays)
    for label, arrays in results.items():
        for key, array in arrays.items():
            signal = signals[f"{label} {key}"]
            assert np.array_equal(signal["data"], array) and signal["data"].dtype == array.dtype
            provenance = signal["original_metadata"]["stempress"]["provenance"]
            assert provenance["source"]["sha256"] == record["source"]["sha256"]
            assert signal["original_metadata"]["stempress"]["target"] == label
    bf = signals["bf BF"]["axes"]
    assert [a["name"] for a in bf] == ["Rx", "Ry"] and [a["size"] for a in bf] == [8, 8]
    assert all(a["scale"] == pytest.approx(0.5) and a["units"] == "nm" and not a["navigate"] for a in bf)
    assert cal.r_pixel_size == pytest.approx(0.5) and cal.r_units == "nm"
    mean = signals["mean_pattern mean"]["axes"]
    assert [a["scale"] for a in mean] == pytest.approx([cal.q_pixel_size] * 2) and mean[0]["units"] == "mrad"
    assert mean[0]["offset"] == pytest.approx(-cal.centre_y * cal.q_pixel_size)  # 0 at the beam centre
    profile = signals["radial:bins=16 profile"]["axes"]
    assert [a["navigate"] for a in profile] == [True, True, False]  # a profile per scan position
    assert profile[2]["name"] == "r" and profile[2]["size"] == 16
    top = float(radius_map((64, 64), cal).max()) * cal.q_pixel_size  # the farthest pixel from the centre, in mrad
    assert profile[2]["offset"] + 15.5 * profile[2]["scale"] == pytest.approx(top, rel=1e-6)
    assert signals["com com_x"]["metadata"]["Signal"]["quantity"] == "CoM shift along det_x (px)"


def test_emd_tree_is_what_emdfile_reads_and_shares_the_data(reduced, expected):
    """What emdfile 0.0.x / py4DSTEM 0.14 look for (benchmarks/check_reduced_readers.py runs the real reader)."""
    _, want = expected
    with h5py.File(reduced) as f:
        assert f.attrs["emd_group_type"] == "file" and f.attrs["version_major"] == 1 and f.attrs["version_minor"] == 0
        assert [k for k in f if f[k].attrs.get("emd_group_type") == "root"] == [EMD_ROOT]
        root = f[EMD_ROOT]
        assert list(root) == ["metadatabundle", "bf", "adf:inner=1.1,outer=3.0", "com", "mean_pattern",
                              "radial:bins=16"]
        cal = root["metadatabundle/calibration"]
        assert cal.attrs["python_class"] == "Calibration"
        assert cal["R_pixel_units"].attrs["type"] in (b"string", "string")
        assert cal["R_pixel_size"][()] == want.r_pixel_size and cal["qx0_mean"][()] == want.centre_y
        assert cal["probe_semiangle"][()] == want.bf_radius_px and cal["Q_pixel_units"][()] == b"mrad"
        classes = {"bf/BF": "RealSlice", "com/com_x": "RealSlice", "mean_pattern/mean": "DiffractionSlice",
                   "radial:bins=16/profile": "Array"}
        for path, cls in classes.items():
            group = root[path]
            assert group.attrs["emd_group_type"] == "array" and group.attrs["python_class"] == cls
            assert root[path.split("/")[0]].attrs["python_class"] == "Node"
            data = group["data"]
            assert "units" in data.attrs
            for n in range(data.ndim):
                dim = group[f"dim{n}"]
                assert dim.shape == (2,) and {"name", "units"} <= set(dim.attrs)
            label, key = path.split("/")
            # one dataset, three names: stempress's index, and soft links from the EMD tree and the hspy signal
            assert data == f[f"{REDUCED_GROUP}/{label}/{key}"] == f[f"{HSPY_GROUP}/{label} {key}/data"]
            for group_path in (f"{EMD_ROOT}/{path}", f"{HSPY_GROUP}/{label} {key}"):
                link = f[group_path].get("data", getlink=True)
                assert isinstance(link, h5py.SoftLink) and link.path == f"/{REDUCED_GROUP}/{label}/{key}"
        names: list[str] = []
        f.visit(names.append)
        stored = [("bf", "BF"), ("adf:inner=1.1,outer=3.0", "ADF"), ("com", "com_y"), ("com", "com_x"),
                  ("mean_pattern", "mean"), ("radial:bins=16", "profile")]
        assert sorted(n for n in names if isinstance(f[n], h5py.Dataset) and f[n].ndim >= 2) == sorted(
            f"{REDUCED_GROUP}/{label}/{key}" for label, key in stored)  # a tree walk meets each array once
        assert f.attrs["file_format"] == "HyperSpy"


def test_existing_output_is_kept_without_overwrite_and_a_failed_write_leaves_nothing(reduced, tmp_path,
                                                                                     monkeypatch):
    before = reduced.read_bytes()
    progress: list[int] = []
    with pytest.raises(StempressError, match="--force"):
        reduce_to_file(open_source(SMOKE), ["bf"], reduced, progress=lambda done, total: progress.append(done))
    assert reduced.read_bytes() == before
    assert progress == []  # refused before the pass, not after it

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reduced_sink, "write_reduced", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        reduce_to_file(open_source(SMOKE), ["bf"], tmp_path / "new.h5")
    assert list(tmp_path.iterdir()) == []


def test_read_reduced_refuses_files_it_did_not_write(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(StempressError, match="not a reduced file"):
        read_reduced(plain)
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(StempressError, match="cannot open"):
        read_reduced(text)
    with pytest.raises(StempressError, match="no such file"):
        read_reduced(tmp_path / "missing.h5")


def test_a_file_from_before_the_interoperable_layout_still_reads(tmp_path):
    """Files written as bare /reduced groups plus the provenance attribute (stempress until this layout)."""
    old = tmp_path / "old.h5"
    record = {"targets": ["com"], "parameters": {"outputs": {"com": ["com_y", "com_x"]}}}
    with h5py.File(old, "w") as f:
        f.attrs[PROVENANCE_ATTR] = json.dumps(record)
        group = f.create_group(f"{REDUCED_GROUP}/com")
        group.attrs["target"] = "com"
        group["com_x"], group["com_y"] = np.ones((2, 3)), np.zeros((2, 3))
    results, got = read_reduced(old)
    assert got == record and list(results["com"]) == ["com_y", "com_x"]
    assert np.array_equal(results["com"]["com_x"], np.ones((2, 3)))
