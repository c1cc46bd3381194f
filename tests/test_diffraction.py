"""Radial profile and Bragg peaks: against direct per-frame computations and planted peaks."""

from __future__ import annotations

import numpy as np
import pytest

from stempress.data.base import ArraySource
from stempress.errors import StempressError
from stempress.exec import ThreadExecutor
from stempress.reduce.calibration import Calibration
from stempress.reduce.diffraction import BraggPeaks, RadialProfile, as_records, find_peaks
from stempress.reduce.imaging import radius_map
from stempress.store.reducing import run_reducers


def _cube(seed: int = 0, shape=(3, 4, 20, 24)) -> np.ndarray:
    return np.random.default_rng(seed).poisson(2.0, shape).astype(np.uint16)


def _cal(shape=(20, 24)) -> Calibration:
    return Calibration(9.3, 11.7, 4.0, det_shape=shape)


def test_radial_profile_is_the_azimuthal_mean_per_ring():
    cube, cal = _cube(), _cal()
    out = run_reducers(cube, [RadialProfile(6, 9.0, calibration=cal)])["radial"]
    assert out["profile"].shape == (3, 4, 6)
    edges = np.linspace(0, 9.0, 7)
    r = radius_map((20, 24), cal)
    for i in range(6):
        ring = (r >= edges[i]) & (r < edges[i + 1])
        expected = cube[..., ring].mean(axis=-1)
        np.testing.assert_allclose(out["profile"][..., i], expected, rtol=1e-12)
    np.testing.assert_allclose(out["radii"], (edges[:-1] + edges[1:]) / 2)


def test_radial_profile_default_reach_covers_every_pixel_and_partitions_agree():
    cube, cal = _cube(1), _cal()
    reducer = RadialProfile(8, calibration=cal)
    whole = run_reducers(cube, [reducer], rows=1)["radial"]
    # every pixel is in some ring: ring means weighted by ring sizes give the frame total
    r = radius_map((20, 24), cal).ravel()
    ring = np.searchsorted(reducer.edges((20, 24), cal), r, side="right") - 1
    sizes = np.bincount(ring, minlength=8)
    assert sizes.sum() == 20 * 24 and ring.max() == 7
    np.testing.assert_allclose((whole["profile"] * sizes).sum(-1), cube.sum(axis=(2, 3)), rtol=1e-12)
    with ThreadExecutor(3) as pool:
        parts = run_reducers(ArraySource(cube), [RadialProfile(8, calibration=cal)], executor=pool)["radial"]
    np.testing.assert_array_equal(parts["profile"], whole["profile"])
    np.testing.assert_array_equal(parts["radii"], whole["radii"])


def test_radial_profile_refuses_bad_settings():
    with pytest.raises(StempressError):
        RadialProfile(0)
    with pytest.raises(StempressError):
        RadialProfile(4, max_radius=-1.0)


def _spots(positions, shape=(32, 32), width=1.2, height=50.0) -> np.ndarray:
    yy, xx = np.indices(shape, dtype=np.float64)
    frame = np.zeros(shape)
    for y, x in positions:
        frame += height * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width**2))
    return frame


def test_find_peaks_recovers_planted_subpixel_positions():
    planted = [(8.3, 9.6), (20.0, 22.4), (25.7, 6.2)]
    found = find_peaks(_spots(planted), threshold=5.0)
    assert len(found) == 3
    for y, x in planted:
        d = np.hypot(found[:, 0] - y, found[:, 1] - x).min()
        assert d < 0.25  # sub-pixel: better than nearest-pixel rounding (up to 0.5 per axis)
    assert np.all(np.diff(found[:, 2]) <= 0)  # brightest first
    assert len(find_peaks(_spots(planted), threshold=1e6)) == 0


def test_bragg_peaks_reducer_pads_counts_and_flattens():
    planted = [[(8.0, 8.0)], [(8.0, 8.0), (22.0, 20.0)], []]
    frames = np.stack([_spots(p) for p in planted])[None]  # (1, 3, 32, 32)
    out = run_reducers(frames, [BraggPeaks(threshold=5.0, max_peaks=4)])["bragg"]
    assert out["peaks"].shape == (1, 3, 4, 3)
    np.testing.assert_array_equal(out["count"], [[1, 2, 0]])
    assert np.isnan(out["peaks"][0, 2]).all() and np.isnan(out["peaks"][0, 0, 1:]).all()
    records = as_records(out)
    assert len(records) == 3
    np.testing.assert_array_equal(records["scan_x"], [0, 1, 1])
    np.testing.assert_allclose(records["y"][0], 8.0, atol=1e-9)
    rel = run_reducers(frames, [BraggPeaks(threshold=0.5, relative=True)])["bragg"]
    np.testing.assert_array_equal(rel["count"], [[1, 2, 0]])
