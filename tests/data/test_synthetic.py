"""The synthetic generator, its suites and the streaming HDF5 writer."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from stempress.data import synthetic
from stempress.data.base import ArraySource, Dataset4D
from stempress.data.emd import EMD_DATA_PATH, read_metadata
from stempress.data.hdf5 import STUDY_EMD_PATH
from stempress.data.open import open_source
from stempress.data.suites import STUDY_TABLE1, SUITES, open_synthetic, parse_synthetic, suite, suite_spec
from stempress.data.synthetic import SyntheticSource, SyntheticSpec, sample_poisson
from stempress.data.write import METADATA_ATTR
from stempress.errors import StempressError
from stempress.store.write import write_hdf5

DIFF = suite_spec("smoke", "4D_Diff")
EELS = suite_spec("smoke", "4D_EELS")
# small, unclipped, no detector defects: what the dose and Poisson checks need
PLAIN = SyntheticSpec(name="plain", scan=(4, 5), det=(48, 48), dtype="uint32", dose=4000.0, seed=7,
                      strain=0.01)


def cube(spec: SyntheticSpec) -> np.ndarray:
    return SyntheticSource(spec).read_rows(0, spec.scan[0])


# -- determinism ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [DIFF, EELS, suite_spec("smoke", "3D_EELS")], ids=lambda s: s.name)
def test_same_seed_same_bytes_other_seed_differs(spec):
    a, b = cube(spec), cube(spec)
    assert a.tobytes() == b.tobytes()
    assert cube(spec.replace(seed=spec.seed + 1)).tobytes() != a.tobytes()


@pytest.mark.parametrize("spec", [DIFF, EELS, PLAIN.replace(descan=(0.1, -0.08))], ids=lambda s: s.name)
def test_block_size_does_not_change_the_data(spec):
    rows = spec.scan[0]
    whole = SyntheticSource(spec).read_rows(0, rows)
    for step in (1, 3):
        src = SyntheticSource(spec)
        parts = [src.read_rows(r, min(r + step, rows)) for r in range(0, rows, step)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    backwards = SyntheticSource(spec)
    np.testing.assert_array_equal(np.concatenate([backwards.read_rows(r, r + 1) for r in reversed(range(rows))]),
                                  whole[::-1])


def test_row_pieces_keep_shape_and_truth(monkeypatch):
    monkeypatch.setattr(synthetic, "_PIECE_PIXELS", 48 * 48 * 2)  # three pieces in a row of five
    src = SyntheticSource(PLAIN)
    assert len(src._pieces()) == 3
    assert src.read_rows(0, 2).shape == (2, *PLAIN.shape[1:])
    np.testing.assert_allclose(src.expected_rows(0, 2).sum(axis=(2, 3)), PLAIN.dose, rtol=1e-5)


@pytest.mark.parametrize("name", [s.name for s in SUITES["smoke"]])
def test_smoke_cubes_have_their_shape_dtype_and_target_sparsity(name):
    spec = suite_spec("smoke", name)
    src = SyntheticSource(spec)
    assert isinstance(src, Dataset4D)
    data = src.read_rows(0, spec.scan[0])
    assert src.shape == data.shape == spec.shape
    assert src.dtype == data.dtype == np.dtype(STUDY_TABLE1[name]["dtype"])
    assert np.mean(data == 0) == pytest.approx(STUDY_TABLE1[name]["sparsity"], abs=0.03)
    assert data.nbytes <= 1.1 * 2**20


def test_suites_are_named_like_the_study_and_errors_list_names():
    assert [s.name for s in SUITES["paper-like"]] == list(STUDY_TABLE1)
    assert sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize for s in SUITES["paper-like"]) < 320 * 2**20
    counted = SUITES["counted"][0]
    assert counted.dtype == "uint8" and counted.dose == 375
    assert [s.name for s in suite("smoke")] == list(STUDY_TABLE1)
    with pytest.raises(StempressError, match="paper-like, smoke, counted"):
        suite("nope")


# -- physics and statistics ---------------------------------------------------------------------------
def test_counts_follow_the_dose_and_poisson_statistics():
    src = SyntheticSource(PLAIN)
    data = src.read_rows(0, PLAIN.scan[0]).astype(np.float64)
    per_frame = data.sum(axis=(2, 3))
    assert per_frame.mean() == pytest.approx(PLAIN.dose, rel=0.02)
    expected = src.expected_rows(0, PLAIN.scan[0]).astype(np.float64)
    # the total of independent Poisson counts has variance equal to its mean
    assert abs(data.sum() - expected.sum()) < 5 * np.sqrt(expected.sum())
    # per frame, the spread of totals matches Poisson (variance ~ mean, not ~0 and not ~mean^2)
    assert 0.4 * PLAIN.dose < per_frame.var() < 2.5 * PLAIN.dose


@pytest.mark.parametrize("lam", [0.02, 0.2, 0.3, 4.0, 40.0])
def test_sampler_is_poisson_on_both_paths(lam):
    # 0.02 and 0.2 go through Poisson splitting, the others through numpy's per-pixel sampler
    rng = np.random.default_rng(5)
    counts = sample_poisson(rng, np.full((20, 20_000), lam, np.float32)).astype(np.float64)
    n = counts.size
    assert counts.mean() == pytest.approx(lam, abs=5 * np.sqrt(lam / n))
    assert counts.var() == pytest.approx(lam, rel=0.05)
    assert np.mean(counts == 0) == pytest.approx(np.exp(-lam), abs=0.01)


def test_sampler_keeps_zero_expectation_at_zero():
    lam = np.zeros((3, 1000), np.float32)
    lam[:, 500:] = 0.1
    counts = sample_poisson(np.random.default_rng(0), lam)
    assert not counts[:, :500].any() and counts[:, 500:].any()


def test_sparsity_falls_as_dose_rises():
    zeros = [np.mean(cube(DIFF.replace(dose=DIFF.dose * f)) == 0) for f in (0.25, 1, 4)]
    assert zeros[0] > zeros[1] > zeros[2]


@pytest.mark.parametrize("spec", [DIFF, EELS, PLAIN.replace(descan=(0.2, 0.15)),
                                  suite_spec("smoke", "3D_EELS")], ids=lambda s: s.name)
def test_expected_is_nonnegative_and_sums_to_the_dose(spec):
    lam = SyntheticSource(spec).expected_rows(0, spec.scan[0])
    assert lam.dtype == np.float32 and lam.shape == spec.shape
    assert lam.min() >= 0
    np.testing.assert_allclose(lam.sum(axis=(2, 3), dtype=np.float64), spec.dose, rtol=1e-5)
    if spec.det[0] > 1:  # a detector region with no signal at all, not just small values
        assert np.mean(lam == 0) > 0.05


def test_descan_moves_the_pattern():
    spec = PLAIN.replace(descan=(0.0, 0.3), scan=(1, 6), cutoff_radius=0.7)
    lam = SyntheticSource(spec).expected_rows(0, 1)[0].astype(np.float64)
    x = np.arange(spec.det[1])
    com_x = (lam.sum(axis=1) * x).sum(axis=1) / lam.sum(axis=(1, 2))
    drift = com_x[-1] - com_x[0]
    assert drift == pytest.approx(0.3 * spec.det[0] / 2, abs=1.5)


def test_zeros_come_in_regions_so_binning_keeps_them():
    spec = suite_spec("smoke", "4D_Diff")
    zeros = [np.mean(cube(spec if b == 1 else spec.replace(bin=b, dtype="float32")) == 0) for b in (1, 2, 4)]
    assert zeros[0] > zeros[1] > zeros[2] > 0.5


@pytest.mark.parametrize("b", [2, 4])
def test_binned_cube_is_the_mean_of_the_unbinned_one(b):
    binned_spec = DIFF.replace(bin=b, dtype="float32")
    binned = cube(binned_spec)
    full = cube(DIFF).astype(np.float64)
    n, m, h, w = full.shape
    means = full.reshape(n, m, h // b, b, w // b, b).mean(axis=(3, 5))
    assert binned.dtype == np.float32 and binned.shape == binned_spec.shape
    np.testing.assert_array_equal(binned, means.astype(np.float32))
    truth = SyntheticSource(binned_spec).expected_rows(0, 2)
    np.testing.assert_allclose(truth.sum(axis=(2, 3)), DIFF.dose / b**2, rtol=1e-5)
    assert SyntheticSource(binned_spec).metadata["bf_disk_radius_px"] == pytest.approx(
        SyntheticSource(DIFF).metadata["bf_disk_radius_px"] / b)


def test_counting_mode_clips_at_the_counter_depth_and_counts_it():
    spec = PLAIN.replace(dtype="uint8", dose=2e6)
    src = SyntheticSource(spec)
    data = src.read_rows(0, spec.scan[0])
    assert data.max() == 255
    assert 0 < src.metadata["clipped_pixels"] <= np.count_nonzero(data == 255)
    assert src.metadata["clip_rows_counted"] == spec.scan[0]
    capped = SyntheticSource(PLAIN.replace(dose=2e6, max_count=4095)).read_rows(0, 1)
    assert capped.max() == 4095


def test_integrating_mode_adds_gain_noise_offset_and_clips():
    counting = cube(PLAIN)
    spec = PLAIN.replace(mode="integrating", gain=8.0, read_noise=2.0, offset=5.0, dtype="uint16")
    src = SyntheticSource(spec)
    data = src.read_rows(0, spec.scan[0]).astype(np.float64)
    truth = src.expected_rows(0, spec.scan[0]).astype(np.float64)
    dark = truth == 0
    # read noise and offset reach pixels no electron can: they are no longer exact zeros
    assert np.mean(data[dark] == 0) < 0.05
    assert data[dark].mean() == pytest.approx(5.0, abs=0.1)
    assert data[dark].std() == pytest.approx(2.0, rel=0.1)
    assert data.sum() - 5.0 * data.size == pytest.approx(8.0 * counting.sum(), rel=0.03)
    assert not np.all(data % 8 == 5)
    saturated = SyntheticSource(spec.replace(dtype="uint8", gain=50.0))
    hot = saturated.read_rows(0, 2)
    assert hot.max() == 255 and saturated.metadata["clipped_pixels"] > 0


def test_hot_pixels_are_reported_and_bright():
    spec = DIFF.replace(hot_pixels=3, hot_rate=3000.0)
    src = SyntheticSource(spec)
    data = src.read_rows(0, spec.scan[0])
    yx = src.metadata["hot_pixels_yx"]
    assert len(yx) == 3
    for y, x in yx:
        assert data[:, :, y, x].mean() > 2500


def test_metadata_holds_spec_and_calibration():
    md = SyntheticSource(DIFF).metadata
    assert md["synthetic"] is True and md["spec"]["name"] == "4D_Diff"
    assert SyntheticSpec(**json.loads(json.dumps(md["spec"]))) == DIFF  # the spec survives JSON
    assert md["Q_pixel_units"] == "mrad" and md["Q_pixel_size"] > 0
    assert md["R_pixel_units"] == "nm" and md["R_pixel_size"] > 0
    assert md["bf_disk_center_px"] == [31.5, 31.5]
    eels = SyntheticSource(EELS).metadata
    assert eels["Q_pixel_units"] == "eV" and eels["energy_axis"] == "det_x"
    json.dumps(md)


@pytest.mark.parametrize("bad", [dict(kind="x"), dict(dtype="int8"), dict(bin=3), dict(bin=2),
                                 dict(det=(63, 64), bin=2, dtype="float32"), dict(dose=0),
                                 dict(max_count=70000, dtype="uint16"), dict(cutoff_radius=0.99), dict(mode="analog"),
                                 dict(scan=(0, 4))])
def test_bad_specs_are_refused(bad):
    with pytest.raises(StempressError):
        PLAIN.replace(**bad)


# -- open_synthetic -----------------------------------------------------------------------------------
def test_open_synthetic_parses_members_and_queries():
    member = open_synthetic("synthetic:smoke/4D_Diff")
    assert member.name == "4D_Diff" and member.spec == DIFF
    assert parse_synthetic("synthetic:smoke/4D_Diff?seed=9").seed == 9
    spec = parse_synthetic("synthetic:diffraction?scan=32x16&det=256x128&dtype=uint8&dose=5000&seed=1"
                           "&descan=0.01,0.02&max_count=200&mode=counting")
    assert (spec.kind, spec.scan, spec.det, spec.dtype, spec.dose, spec.seed) == \
        ("diffraction", (32, 16), (256, 128), "uint8", 5000.0, 1)
    assert spec.descan == (0.01, 0.02) and spec.max_count == 200
    assert parse_synthetic("synthetic:eels?edges=99:0.02,284:0.01").edges == ((99.0, 0.02), (284.0, 0.01))
    binned = parse_synthetic("synthetic:diffraction?det=64x64&bin=4")
    assert binned.dtype == "float32" and binned.shape[2:] == (16, 16)
    assert "scan8x8" in parse_synthetic("synthetic:eels?scan=8x8").name


@pytest.mark.parametrize(("text", "hint"), [
    ("synthetic:nosuch", "diffraction, eels"),
    ("synthetic:smoke/nope", "4D_EELS, 4D_Diff"),
    ("synthetic:nosuite/4D_Diff", "paper-like, smoke, counted"),
    ("synthetic:diffraction?colour=red", "scan"),
    ("synthetic:diffraction?scan=ax3", "malformed"),
    ("synthetic:diffraction?scan=3", "two positive sizes"),
    ("smoke/4D_Diff", "synthetic:"),
])
def test_open_synthetic_errors_name_the_fix(text, hint):
    with pytest.raises(StempressError, match=hint) as info:
        open_synthetic(text)
    assert "\n" not in str(info.value)


# -- write_hdf5 ---------------------------------------------------------------------------------------
def test_write_round_trip_is_bit_exact_with_truth_and_metadata(tmp_path):
    src = SyntheticSource(DIFF)
    seen: list[tuple[int, int]] = []
    out = write_hdf5(src, tmp_path / "d.emd", chunks=(3, 3, 32, 64), compression_kwargs={"compression": "gzip"},
                     truth=True, progress=lambda done, total: seen.append((done, total)))
    assert out == tmp_path / "d.emd"
    with h5py.File(out, "r") as f:
        dset = f[EMD_DATA_PATH]
        assert dset.chunks == (3, 3, 32, 64) and dset.compression == "gzip"
        np.testing.assert_array_equal(dset[:], SyntheticSource(DIFF).read_rows(0, 8))
        np.testing.assert_array_equal(dset.parent["expected"][:], SyntheticSource(DIFF).expected_rows(0, 8))
        assert json.loads(dset.attrs[METADATA_ATTR])["clip_rows_counted"] == 8
    with open_source(out) as again:
        assert again.metadata["format"] == "emd-emdfile"
        assert again.metadata["calibration"]["Q_pixel_units"] == "mrad"
        assert again.metadata["calibration"]["R_pixel_size"] == src.metadata["R_pixel_size"]
    assert read_metadata(out)["spec"]["seed"] == DIFF.seed
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == seen[-1][1]
    assert list(tmp_path.iterdir()) == [out]


def test_simulate_output_is_emd_that_hyperspys_reader_opens_calibrated(tmp_path):
    """The layout py4DSTEM writes: EMD 1.0 root attributes, and RosettaSciIO's EMD reader (HyperSpy's
    ``hs.load(path)`` for a .emd) opens it as one calibrated signal, the truth left aside."""
    from rsciio.emd import file_reader

    src = SyntheticSource(DIFF)
    out = write_hdf5(src, tmp_path / "sim.emd", truth=True)
    with h5py.File(out, "r") as f:
        assert (f.attrs["emd_group_type"], f.attrs["version_major"], f.attrs["version_minor"]) == ("file", 1, 0)
    signals = file_reader(str(out))
    assert len(signals) == 1
    np.testing.assert_array_equal(signals[0]["data"], src.read_rows(0, 8))
    scales = [axis["scale"] for axis in signals[0]["axes"]]
    units = [axis["units"] for axis in signals[0]["axes"]]
    assert scales == pytest.approx([src.metadata["R_pixel_size"]] * 2 + [src.metadata["Q_pixel_size"]] * 2)
    assert units == ["nm", "nm", "mrad", "mrad"]


def test_plain_layout_writes_only_the_dataset_with_calibration_beside_it(tmp_path):
    out = write_hdf5(SyntheticSource(DIFF), tmp_path / "p.h5", layout="plain")
    with h5py.File(out, "r") as f:
        assert list(f) == ["version_1"] and "emd_group_type" not in f.attrs
        assert f[STUDY_EMD_PATH].parent.attrs["Q_pixel_units"] == "mrad"
    with pytest.raises(StempressError, match="plain layout"):
        write_hdf5(SyntheticSource(DIFF), tmp_path / "q.h5", dataset_path="data")
    assert not (tmp_path / "q.h5").exists()


def test_write_blocks_are_whole_chunk_rows(tmp_path, monkeypatch):
    src = SyntheticSource(DIFF)
    starts: list[tuple[int, int]] = []
    real = src.read_rows
    monkeypatch.setattr(src, "read_rows", lambda a, b: starts.append((a, b)) or real(a, b))
    write_hdf5(src, tmp_path / "c.h5", chunks=(3, 8, 64, 64), rows=4)  # rounded up to whole chunk rows
    assert starts == [(0, 6), (6, 8)]


def test_write_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "x.h5"
    write_hdf5(ArraySource(np.ones((2, 2, 4, 4), np.uint16)), out)
    with pytest.raises(StempressError, match=r"x\.h5.*--force"):
        write_hdf5(ArraySource(np.zeros((2, 2, 4, 4), np.uint16)), out)
    write_hdf5(ArraySource(np.zeros((2, 2, 4, 4), np.uint16)), out, force=True, layout="plain",
               dataset_path="data")
    with h5py.File(out, "r") as f:
        assert list(f) == ["data"] and not f["data"][:].any()


class _Broken(ArraySource):
    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if start >= 2:
            raise RuntimeError("disk on fire")
        return super().read_rows(start, stop)


def test_write_failure_leaves_no_file(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_hdf5(_Broken(np.ones((4, 2, 4, 4), np.uint8)), tmp_path / "y.h5", rows=1)
    assert list(tmp_path.iterdir()) == []


def test_write_truth_needs_a_truth(tmp_path):
    with pytest.raises(StempressError, match="--truth"):
        write_hdf5(ArraySource(np.ones((1, 1, 2, 2), np.uint8)), tmp_path / "t.h5", truth=True)
    assert list(tmp_path.iterdir()) == []


def test_integer_detector_parameters_are_accepted():
    spec = SyntheticSpec(kind="diffraction", scan=(2, 2), det=(16, 16), mode="integrating", gain=40, offset=3,
                         dose=200)
    assert spec.gain == 40.0 and isinstance(spec.gain, float)
    data = SyntheticSource(spec).read_rows(0, 2)
    assert data.shape == (2, 2, 16, 16) and data.max() > 0
