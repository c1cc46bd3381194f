"""Imaging reducers against direct numpy on the whole cube; calibration against the generator; DPC maths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stempress.data.base import ArraySource
from stempress.data.suites import suite
from stempress.errors import StempressError
from stempress.reduce import (
    Annulus,
    Calibration,
    CenterOfMass,
    Mask,
    MaxPattern,
    MeanPattern,
    VirtualDetectors,
    abf,
    adf,
    bf,
    calibrate,
    curl,
    default_detectors,
    default_reducers,
    divergence,
    dpc_field,
    estimate_calibration,
    haadf,
    integrated_phase,
    radius_map,
    run_reducers,
)

DIFFRACTION = [("smoke", "4D_Diff"), ("smoke", "4D_Diff-2x2-binning"), ("smoke", "4D_Diff-4x4-binning"),
               ("counted", "counted")]


def _source(suite_name: str, name: str) -> ArraySource:
    src = next(s for s in suite(suite_name) if s.name == name)
    return ArraySource(src.read_rows(0, src.shape[0]), name=name, metadata=src.metadata)


@pytest.fixture(scope="module", params=DIFFRACTION, ids=[n for _, n in DIFFRACTION])
def source(request) -> ArraySource:
    return _source(*request.param)


def test_calibration_finds_the_generators_disk_within_a_pixel(source):
    truth_y, truth_x = source.metadata["bf_disk_center_px"]
    truth_r = source.metadata["bf_disk_radius_px"]
    for sample in (None, 3):
        cal = calibrate(source, sample_rows=sample)
        assert abs(cal.centre_y - truth_y) < 1 and abs(cal.centre_x - truth_x) < 1
        assert abs(cal.bf_radius_px - truth_r) < 1
        assert cal.origin == "mean pattern" and cal.det_shape == source.shape[2:]
        assert cal.q_units == "mrad"
        assert cal.to_angle(truth_r) == pytest.approx(source.metadata["Q_pixel_size"] * truth_r)


def test_virtual_images_and_com_equal_direct_numpy(source):
    cal = calibrate(source, sample_rows=None)
    detectors = [*default_detectors(cal), abf(), Mask("weighted", np.linspace(0, 2, math.prod(source.shape[2:]))
                                                     .reshape(source.shape[2:]))]
    reducers = [VirtualDetectors(detectors, calibration=cal), CenterOfMass(calibration=cal),
                CenterOfMass(mask_radius=1.5, units="bf", calibration=cal, name="com_masked"),
                MeanPattern(), MaxPattern()]
    got = run_reducers(source, reducers, rows=3)
    cube = source.array
    exact = cube.astype(np.int64) if cube.dtype.kind == "u" else cube.astype(np.float64)
    for name, mask in reducers[0].masks(source.shape[2:], cal).items():
        if name == "weighted":
            want = np.einsum("abij,ij->ab", cube.astype(np.float64), mask)
            np.testing.assert_allclose(got["virtual"][name], want, rtol=1e-12)
        else:  # integer counts (or binned means on a 1/b^2 grid) sum exactly
            want = np.einsum("abij,ij->ab", exact, mask.astype(exact.dtype))
            assert np.array_equal(got["virtual"][name], want.astype(np.float64)), name
    yy, xx = np.indices(source.shape[2:], dtype=np.float64)
    frames = cube.astype(np.float64)
    for key, mask in (("com", np.ones(source.shape[2:])),
                      ("com_masked", radius_map(source.shape[2:], cal) < 1.5 * cal.bf_radius_px)):
        total = np.einsum("abij,ij->ab", frames, mask)
        com_y = np.einsum("abij,ij->ab", frames, mask * (yy - cal.centre_y)) / total
        com_x = np.einsum("abij,ij->ab", frames, mask * (xx - cal.centre_x)) / total
        np.testing.assert_allclose(got[key]["com_y"], com_y, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[key]["com_x"], com_x, rtol=1e-10, atol=1e-12)
        assert np.array_equal(got[key]["intensity"], total)
    assert np.array_equal(got["mean_pattern"]["mean"], frames.sum(axis=(0, 1)) / (cube.shape[0] * cube.shape[1]))
    assert np.array_equal(got["max_pattern"]["max"], cube.max(axis=(0, 1)))
    assert got["max_pattern"]["max"].dtype == cube.dtype


def test_mean_pattern_bits_do_not_depend_on_block_size(source):
    patterns = [run_reducers(source, [MeanPattern()], rows=rows)["mean_pattern"]["mean"] for rows in (1, 7, None)]
    assert patterns[0].dtype == np.float64
    assert all(np.array_equal(patterns[0], p) for p in patterns[1:])


def test_default_detectors_are_ordered_disjoint_and_on_the_detector(source):
    cal = calibrate(source, sample_rows=None)
    dets = default_detectors(cal)
    assert [d.name for d in dets] == ["BF", "ADF", "HAADF"]
    masks = VirtualDetectors(dets, calibration=cal).masks(source.shape[2:])
    stacked = np.stack(list(masks.values()))
    assert stacked.sum(axis=0).max() == 1  # no pixel in two detectors
    assert all(m.any() for m in masks.values())
    assert dets[0].outer == pytest.approx(cal.bf_radius_px) and dets[1].inner == pytest.approx(1.1 * cal.bf_radius_px)
    results = run_reducers(source, default_reducers(cal))
    assert set(results) == {"virtual", "com", "mean_pattern"}


def test_default_haadf_starts_at_50_mrad_where_the_detector_reaches():
    cal = Calibration(73.0, 84.0, 10.29, 1.94, "mrad", det_shape=(147, 169))
    haadf_inner = default_detectors(cal)[2].inner
    assert cal.to_angle(haadf_inner) == pytest.approx(50.0)
    small = Calibration(31.5, 31.5, 17.0, 1.17, "mrad", det_shape=(64, 64))  # 50 mrad is off this detector
    assert default_detectors(small)[2].inner == pytest.approx((1.1 * 17.0 + 32.0) / 2)


def test_detector_units_convert_and_misuse_is_explained():
    cal = Calibration(10.0, 10.0, 4.0, 2.0, "mrad", det_shape=(21, 21))
    assert bf().radii_px(cal) == (0.0, 4.0)
    assert adf().radii_px(cal) == pytest.approx((4.4, 12.0))
    assert haadf(20, 30).radii_px(cal) == (10.0, 15.0)
    assert Annulus("x", 0.01, 0.02, "rad").radii_px(cal) == pytest.approx((5.0, 10.0))
    pixels_only = Calibration(10.0, 10.0, None, det_shape=(21, 21))
    with pytest.raises(StempressError, match="not an angle"):
        haadf().radii_px(pixels_only)
    with pytest.raises(StempressError, match="no BF radius"):
        bf().radii_px(pixels_only)
    with pytest.raises(StempressError, match="inner < outer"):
        Annulus("bad", 5, 2).radii_px(cal)
    with pytest.raises(StempressError, match="covers no pixel"):
        VirtualDetectors([Annulus("far", 100, 200)]).start((2, 2, 21, 21), np.uint16, cal)
    with pytest.raises(StempressError, match="detector's shape"):
        VirtualDetectors([Mask("m", np.ones((3, 3)))]).start((2, 2, 21, 21), np.uint16, cal)
    with pytest.raises(StempressError, match="calibration is for"):
        VirtualDetectors([bf()]).start((2, 2, 20, 21), np.uint16, cal)
    with pytest.raises(StempressError, match="distinct"):
        VirtualDetectors([bf(), bf()])


def test_calibration_from_metadata_reads_emdfile_and_py4dstem_keys():
    md = {"calibration": {"Q_pixel_size": 0.5e-3, "Q_pixel_units": "rad", "R_pixel_size": 2.0,
                          "R_pixel_units": "A", "qx0_mean": 30.0, "qy0_mean": 33.5, "probe_semiangle": 12.0}}
    cal = Calibration.from_metadata(md, (64, 70))
    assert (cal.centre_y, cal.centre_x, cal.bf_radius_px) == (30.0, 33.5, 12.0)
    assert (cal.q_pixel_size, cal.q_units, cal.angle_units) == (0.5, "mrad", "mrad")
    assert (cal.r_pixel_size, cal.r_units, cal.origin) == (2.0, "A", "metadata")
    bare = Calibration.from_metadata({}, (64, 70))
    assert (bare.centre_y, bare.centre_x, bare.bf_radius_px, bare.angular) == (31.5, 34.5, None, False)
    assert bare.to_angle(3.0) == 3.0 and bare.angle_units == "px"
    reciprocal = Calibration.from_metadata({"Q_pixel_size": 0.01, "Q_pixel_units": "A^-1"}, (8, 8))
    assert reciprocal.q_units == "A^-1" and not reciprocal.angular


def test_estimate_calibration_on_a_drawn_disk_with_a_hot_pixel_and_a_bright_halo():
    yy, xx = np.indices((90, 100), dtype=float)
    r = np.hypot(yy - 41.3, xx - 55.8)
    pattern = np.where(r < 17.4, 5.0, 0.05) + 30 * np.exp(-(r / 3) ** 2)  # halo: the middle is 7x the plateau
    pattern[5, 7] = 1e4
    cal = estimate_calibration(pattern)
    assert cal.centre_y == pytest.approx(41.3, abs=0.3) and cal.centre_x == pytest.approx(55.8, abs=0.3)
    assert cal.bf_radius_px == pytest.approx(17.4, abs=0.3)
    with pytest.raises(StempressError, match="bright-field"):
        estimate_calibration(np.zeros((8, 8)))


# -- DPC -----------------------------------------------------------------------------------------------------
def _phase(ny: int = 48, nx: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A non-periodic phase (two blobs on a ramp) and its exact gradient."""
    yy, xx = np.indices((ny, nx), dtype=float)
    phi = 0.02 * xx - 0.01 * yy
    gy, gx = np.full((ny, nx), -0.01), np.full((ny, nx), 0.02)
    for cy, cx, s, a in ((20, 25, 5.0, 1.0), (30, 45, 3.5, -0.6)):
        blob = a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        phi = phi + blob
        gy = gy - blob * (yy - cy) / (s * s)
        gx = gx - blob * (xx - cx) / (s * s)
    return phi, gy, gx


def test_integrated_phase_recovers_a_known_phase_up_to_a_constant():
    phi, gy, gx = _phase()
    got = integrated_phase(gy, gx)
    want = phi - phi.mean()
    assert np.abs(got - want).max() < 0.01 * np.ptp(want)
    assert np.abs(got).mean() == pytest.approx(np.abs(want).mean(), rel=0.02)
    flipped = integrated_phase(-gy, -gx)  # the sign convention: g = +grad(phi)
    assert np.corrcoef(flipped.ravel(), want.ravel())[0, 1] < -0.99
    damped = integrated_phase(gy, gx, highpass=0.05)
    assert np.ptp(damped) < np.ptp(got)  # the regulariser removes the slow ramp
    assert np.abs(integrated_phase(gy, gx, mirror=False) - want).max() > np.abs(got - want).max()


def test_curl_of_a_gradient_vanishes_and_rotation_shows_up_in_it():
    phi, gy, gx = _phase()
    ny_, nx_ = np.gradient(phi)
    assert np.abs(curl(ny_, nx_)).max() < 1e-12
    assert np.abs(curl(gy, gx)).max() < 0.01 * np.abs(gx).max()
    # the detector is rotated by 30 degrees against the scan: undoing it restores a curl-free field
    t = math.radians(-30)
    d_x, d_y = math.cos(t) * gx - math.sin(t) * gy, math.sin(t) * gx + math.cos(t) * gy
    assert np.abs(curl(d_y, d_x)).max() > 0.05 * np.abs(gx).max()
    ry, rx = dpc_field(d_y, d_x, rotation_deg=30)
    np.testing.assert_allclose((ry, rx), (gy, gx), atol=1e-12)
    ty, tx = dpc_field(gx, gy, transpose=True)
    np.testing.assert_array_equal((ty, tx), (gy, gx))
    lap = divergence(ny_, nx_)
    assert lap[20, 25] < 0 < lap[30, 45]  # a positive blob is a sink of its gradient, a negative one a source
