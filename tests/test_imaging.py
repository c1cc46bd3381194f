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
    curl,
    default_detectors,
    default_reducers,
    divergence,
    dpc_field,
    estimate_calibration,
    haadf,
    integrated_phase,
    radius_map,
)
from stempress.reduce.imaging import COM_MASK_BF, fit_dpc_rotation
from stempress.store.reducing import calibrate, run_reducers

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
    reducers = [VirtualDetectors(detectors, calibration=cal), CenterOfMass(mask_radius=None, calibration=cal),
                CenterOfMass(mask_radius=1.5, units="bf", calibration=cal, name="com_masked"),
                CenterOfMass(calibration=cal, name="com_default"), MeanPattern(), MaxPattern()]
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
    r = radius_map(source.shape[2:], cal)
    for key, mask in (("com", np.ones(source.shape[2:])), ("com_masked", r < 1.5 * cal.bf_radius_px),
                      ("com_default", r < COM_MASK_BF * cal.bf_radius_px)):
        total = np.einsum("abij,ij->ab", frames, mask)
        com_y = np.einsum("abij,ij->ab", frames, mask * (yy - cal.centre_y)) / total
        com_x = np.einsum("abij,ij->ab", frames, mask * (xx - cal.centre_x)) / total
        np.testing.assert_allclose(got[key]["com_y"], com_y, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[key]["com_x"], com_x, rtol=1e-10, atol=1e-12)
        assert np.array_equal(got[key]["intensity"], total)
    assert float(got["com"]["mask_radius_px"]) == math.inf
    assert float(got["com_default"]["mask_radius_px"]) == COM_MASK_BF * cal.bf_radius_px
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


def _atoms(ny: int = 40, nx: int = 48, spacing: float = 8.0, seed: int = 0) -> np.ndarray:
    """An atom-like phase: jittered Gaussian peaks on a lattice (potential maxima sharper than minima)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((ny, nx), dtype=float)
    phi = np.zeros((ny, nx))
    for cy in np.arange(spacing / 2, ny, spacing):
        for cx in np.arange(spacing / 2, nx, spacing):
            y0, x0 = cy + rng.normal(0, 0.5), cx + rng.normal(0, 0.5)
            phi += rng.uniform(0.7, 1.3) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 1.5**2))
    return phi


def _measured(g_y: np.ndarray, g_x: np.ndarray, rotation_deg: float, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    """The CoM maps a detector turned by ``rotation_deg`` (then transposed) records for the field ``g``: the
    inverse of ``dpc_field``."""
    t = math.radians(-rotation_deg)
    d_x, d_y = math.cos(t) * g_x - math.sin(t) * g_y, math.sin(t) * g_x + math.cos(t) * g_y
    return (d_x, d_y) if transpose else (d_y, d_x)


@pytest.mark.parametrize(("angle", "transpose"), [(0.0, False), (37.0, False), (-120.0, True), (171.5, False),
                                                  (-95.0, True), (180.0, True)])
def test_fit_dpc_rotation_recovers_a_known_rotation_and_transpose(angle, transpose):
    phi = _atoms()
    g_y, g_x = np.gradient(phi)
    com_y, com_x = _measured(g_y, g_x, angle, transpose)
    rng = np.random.default_rng(1)
    noise = 0.05 * float(np.abs(g_x).max())
    com_y = com_y + rng.normal(0, noise, com_y.shape)
    com_x = com_x + rng.normal(0, noise, com_x.shape)
    fit = fit_dpc_rotation(com_y, com_x)
    assert fit.transpose == transpose
    assert abs(math.remainder(fit.rotation_deg - angle, 360.0)) < 1.0
    assert 0 <= fit.curl_fraction < 0.1  # a clean gradient plus noise: little curl left
    iy, ix = np.indices(com_y.shape)
    drift = fit_dpc_rotation(com_y + 0.3 + 0.004 * ix - 0.002 * iy, com_x - 0.2 - 0.003 * iy)  # linear descan
    assert drift.transpose == transpose and abs(math.remainder(drift.rotation_deg - fit.rotation_deg, 360)) < 1e-6
    # iDPC of the corrected field is the phase (relative RMS error); of the raw maps, turned, it is not
    want = phi - phi.mean()

    def error(phase: np.ndarray) -> float:
        return float(np.sqrt(np.mean((phase - want) ** 2)) / np.std(want))

    fixed = error(integrated_phase(com_y, com_x, rotation_deg=fit.rotation_deg, transpose=fit.transpose))
    raw = error(integrated_phase(com_y, com_x))
    assert fixed < 0.2  # the floor: integrated noise
    assert raw > 1.5 * fixed if angle or transpose else raw == pytest.approx(fixed, abs=0.01)


def test_dpc_rotation_of_noise_or_of_a_tiny_scan_says_so():
    rng = np.random.default_rng(2)
    noise = fit_dpc_rotation(rng.normal(size=(30, 30)), rng.normal(size=(30, 30)))
    assert 0.3 < noise.curl_fraction <= 0.5  # no rotation makes noise curl-free
    tiny = fit_dpc_rotation(np.ones((1, 5)), np.ones((1, 5)))
    assert math.isnan(tiny.rotation_deg) and math.isnan(tiny.curl_fraction) and not tiny.transpose
    flat = fit_dpc_rotation(np.full((4, 4), 0.5), np.zeros((4, 4)))  # a uniform shift: no structure to fit
    assert math.isnan(flat.rotation_deg)
    with pytest.raises(StempressError, match="2-D"):
        fit_dpc_rotation(np.ones((3, 3)), np.ones((3, 4)))


def _deflected_cube(g_y: np.ndarray, g_x: np.ndarray, cal: Calibration, det: tuple[int, int]) -> np.ndarray:
    """Counts of an antialiased BF disk shifted by (g_y, g_x) px at each position (CoM = shift to ~0.01 px)."""
    yy, xx = np.indices(det, dtype=float)
    r = np.hypot(yy - (cal.centre_y + g_y[..., None, None]), xx - (cal.centre_x + g_x[..., None, None]))
    return np.rint(400 * np.clip(cal.bf_radius_px + 0.5 - r, 0, 1)).astype(np.uint16)


def test_com_reducer_reports_the_rotation_of_a_turned_detector():
    phi = _atoms(24, 24, spacing=6.0, seed=3)
    g_y, g_x = np.gradient(phi)
    scale = 1.5 / float(np.hypot(g_y, g_x).max())  # deflections up to 1.5 px
    cal = Calibration(20.0, 19.0, 6.0, det_shape=(40, 40))
    d_y, d_x = _measured(g_y * scale, g_x * scale, -64.0, True)
    cube = _deflected_cube(d_y, d_x, cal, (40, 40))
    out = run_reducers(cube, [CenterOfMass(calibration=cal)], rows=5)["com"]
    np.testing.assert_allclose(out["com_y"], d_y, atol=0.05)
    assert bool(out["transpose"]) and abs(math.remainder(float(out["rotation_deg"]) + 64.0, 360.0)) < 1.0
    assert out["rotation_deg"].shape == () and out["transpose"].dtype == bool
    assert float(out["curl_fraction"]) < 0.05
    plain = run_reducers(cube, [CenterOfMass(calibration=cal, rotation=False)])["com"]
    assert set(plain) == {"com_y", "com_x", "intensity", "mask_radius_px"}
    assert np.array_equal(plain["com_y"], out["com_y"])


def _disk_cube(seed: int = 4) -> tuple[np.ndarray, Calibration]:
    """Poisson counts of a BF disk (radius 4 px) on a faint background, 32 x 32 detector."""
    cal = Calibration(15.5, 16.0, 4.0, det_shape=(32, 32))
    lam = np.where(radius_map((32, 32), cal) < 4.0, 20.0, 0.05)
    return np.random.default_rng(seed).poisson(lam, size=(6, 7, 32, 32)).astype(np.uint16), cal


def test_default_com_mask_ignores_a_hot_pixel_outside_it_and_unmasked_still_sees_it():
    clean, cal = _disk_cube()
    hot = clean.copy()
    hot[:, :, 30, 2] = 3000  # 20 px from the centre: beyond COM_MASK_BF * 4 px = 12 px
    assert radius_map((32, 32), cal)[30, 2] > COM_MASK_BF * cal.bf_radius_px
    reducers = [CenterOfMass(calibration=cal), CenterOfMass(mask_radius=None, calibration=cal, name="all"),
                CenterOfMass(mask_radius=math.inf, calibration=cal, name="inf")]
    a, b = run_reducers(clean, reducers), run_reducers(hot, reducers)
    for key in ("com_y", "com_x", "intensity"):
        assert np.array_equal(a["com"][key], b["com"][key]), key  # the hot pixel is outside the default mask
        assert np.array_equal(b["all"][key], b["inf"][key])
    assert np.abs(b["all"]["com_y"] - a["all"]["com_y"]).min() > 5.0  # unmasked, every CoM is dragged
    frames = hot.astype(np.float64)
    yy, xx = np.indices((32, 32), dtype=np.float64)
    total = frames.sum(axis=(2, 3))
    want_y = np.einsum("abij,ij->ab", frames, yy - cal.centre_y) / total
    want_x = np.einsum("abij,ij->ab", frames, xx - cal.centre_x) / total
    np.testing.assert_allclose(b["all"]["com_y"], want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b["all"]["com_x"], want_x, rtol=1e-12, atol=1e-12)
    assert float(b["com"]["mask_radius_px"]) == COM_MASK_BF * cal.bf_radius_px
    assert float(b["all"]["mask_radius_px"]) == math.inf


def test_com_mask_settings_and_the_fallback_without_a_bf_radius():
    no_radius = Calibration(15.5, 16.0, None, det_shape=(32, 32))
    assert CenterOfMass().mask_radius_px(no_radius) == math.inf  # "auto" needs a BF radius; else whole detector
    assert CenterOfMass(mask_radius=2.0, units="bf").mask_radius_px(Calibration(1, 1, 3.0)) == 6.0
    assert CenterOfMass(mask_radius=5).mask_radius_px(no_radius) == 5.0
    for bad in ("big", 0, -1.0, math.nan):
        with pytest.raises(StempressError, match="mask_radius"):
            CenterOfMass(mask_radius=bad)
    with pytest.raises(StempressError, match="covers no pixel"):
        CenterOfMass(mask_radius=0.1, calibration=Calibration(15.2, 16.3, 4.0)).start((2, 2, 32, 32), np.uint16)
