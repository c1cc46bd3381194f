"""Electron counting of integrating frames: accuracy against the known Poisson counts, references, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stempress.data.base import ArraySource, iter_blocks
from stempress.data.open import open_source
from stempress.data.synthetic import SyntheticSource, SyntheticSpec
from stempress.errors import StempressError
from stempress.events.counting import (
    CountedSource,
    CountingParams,
    count_frames,
    counting_accuracy,
    true_counts,
)

GAIN, OFFSET = 40.0, 100.0


def _integrating(read_noise: float, dose: float = 300.0, offset: float = OFFSET) -> SyntheticSource:
    return open_source(f"synthetic:diffraction?scan=8x8&det=64x64&mode=integrating&gain={GAIN:g}"
                       f"&read_noise={read_noise:g}&dose={dose:g}&dtype=uint16&offset={offset:g}&seed=3")


def _params(**kw) -> CountingParams:
    base = {"dark": OFFSET, "gain": GAIN, "threshold": GAIN / 2}
    return CountingParams(**{**base, **kw})


def test_true_counts_share_the_random_stream() -> None:
    # without read noise the integrating ADU are exactly gain * counts + offset of the counting twin
    src = _integrating(0.0)
    adu = src.read_rows(0, 8).astype(np.int64)
    truth = true_counts(src).read_rows(0, 8).astype(np.int64)
    assert truth.sum() > 10_000
    np.testing.assert_array_equal(adu, truth * int(GAIN) + int(OFFSET))
    # with read noise the residual is Gaussian-sized, never a whole electron
    noisy = _integrating(2.0).read_rows(0, 8).astype(np.int64)
    assert np.abs(noisy - truth * int(GAIN) - int(OFFSET)).max() < GAIN / 2


def test_low_read_noise_recovers_counts_high_noise_degrades() -> None:
    results = {}
    for rn in (2.0, 14.0):
        src = _integrating(rn)
        results[rn] = counting_accuracy(CountedSource(src, _params()), true_counts(src))
    low, high = results[2.0], results[14.0]
    assert abs(low["total_error_percent"]) < 2.0
    assert low["exact_fraction"] > 0.999 and low["exact_fraction_hit"] > 0.99
    assert low["pixel_rms"] < 0.02
    assert abs(high["total_error_percent"]) > 10.0
    assert high["exact_fraction"] < low["exact_fraction"]
    assert high["pixel_rms"] > 5 * max(low["pixel_rms"], 0.01)


def test_sigma_threshold_equals_adu_threshold() -> None:
    src = _integrating(2.0)
    a = CountedSource(src, _params(threshold=10.0, threshold_unit="sigma", read_noise=2.0)).read_rows(0, 3)
    b = CountedSource(src, _params(threshold=20.0)).read_rows(0, 3)
    np.testing.assert_array_equal(a, b)
    per_pixel = np.full((64, 64), 2.0)
    c = CountedSource(src, _params(threshold=10.0, threshold_unit="sigma", read_noise=per_pixel)).read_rows(0, 3)
    np.testing.assert_array_equal(a, c)


def test_constant_dark_offset_changes_nothing_after_subtraction() -> None:
    plain = CountedSource(_integrating(2.0, offset=100.0), _params(dark=100.0)).read_rows(0, 8)
    shifted_src = _integrating(2.0, offset=600.0)
    shifted = CountedSource(shifted_src, _params(dark=600.0)).read_rows(0, 8)
    per_pixel = CountedSource(shifted_src, _params(dark=np.full((64, 64), 600.0))).read_rows(0, 8)
    np.testing.assert_array_equal(plain, shifted)
    np.testing.assert_array_equal(plain, per_pixel)
    # forgetting the dark turns every pixel into ~15 electrons: the reference is really applied
    assert CountedSource(shifted_src, _params(dark=0.0)).read_rows(0, 1).mean() > 10


def test_per_pixel_dark_and_gain_references() -> None:
    rng = np.random.default_rng(0)
    truth = rng.poisson(2.0, size=(4, 5, 16, 16)).astype(np.int64)
    dark = rng.uniform(50, 150, size=(16, 16))
    gain = rng.uniform(20, 60, size=(16, 16))
    adu = np.rint(truth * gain + dark + rng.normal(0, 1.0, truth.shape)).astype(np.uint16)
    counted = CountedSource(ArraySource(adu), CountingParams(dark=dark, gain=gain, threshold=10.0)).read_rows(0, 4)
    np.testing.assert_array_equal(counted, truth)
    # a scalar gain that is wrong for most pixels is measurably worse
    wrong = count_frames(adu, CountingParams(dark=dark, gain=40.0, threshold=10.0))
    acc = counting_accuracy(wrong, truth)
    assert acc["exact_fraction_hit"] < 0.8 and acc["pixel_rms"] > 0.3


def test_centroid_mode_merges_charge_shared_electrons() -> None:
    frames = np.zeros((2, 1, 12, 12), np.float32)
    # frame 0: one electron split 60/40 over two pixels, one whole electron elsewhere
    frames[0, 0, 3, 3], frames[0, 0, 3, 4] = 0.6 * GAIN, 0.4 * GAIN
    frames[0, 0, 9, 9] = GAIN
    # frame 1: a diagonal pair (a cluster only with connectivity 2) and two electrons in one pixel
    frames[1, 0, 5, 5], frames[1, 0, 6, 6] = 0.5 * GAIN, 0.5 * GAIN
    frames[1, 0, 1, 10] = 2 * GAIN
    src = ArraySource(frames + OFFSET)
    thr = GAIN / 4
    threshold = CountedSource(src, _params(threshold=thr)).read_rows(0, 2)
    one = CountedSource(src, _params(threshold=thr, mode="centroid")).read_rows(0, 2)
    diag = CountedSource(src, _params(threshold=thr, mode="centroid", connectivity=2)).read_rows(0, 2)
    summed = CountedSource(src, _params(threshold=thr, mode="centroid", cluster_count="sum")).read_rows(0, 2)
    assert threshold[0, 0, 3, 3] == 1 and threshold[0, 0, 3, 4] == 0  # per-pixel rounding splits badly
    assert one[0, 0, 3, 3] == 1 and one[0, 0].sum() == 2  # centroid at the heavier pixel
    assert one[1, 0].sum() == 3 and diag[1, 0].sum() == 2  # diagonal pair is one electron at connectivity 2
    assert summed[1, 0, 1, 10] == 2 and one[1, 0, 1, 10] == 1
    assert one.dtype == np.uint16


def test_blocks_and_metadata() -> None:
    src = _integrating(2.0)
    counted = CountedSource(src, _params(dark=np.full((64, 64), OFFSET), mode="centroid", connectivity=2))
    assert counted.shape == src.shape and counted.dtype == np.uint16
    whole = counted.read_rows(0, 8)
    np.testing.assert_array_equal(np.concatenate([b.data for b in iter_blocks(counted, rows=3)]), whole)
    md = counted.metadata["counting"]
    assert md["lossy"] == "ADC values are not kept"
    assert md["mode"] == "centroid" and md["connectivity"] == 2 and md["gain"] == GAIN
    assert md["dark"]["per_pixel"] == [64, 64] and md["dark"]["mean"] == OFFSET
    assert md["threshold"] == GAIN / 2 and md["threshold_unit"] == "adu"
    assert counted.metadata["synthetic"] is True  # the source's metadata is kept
    json.dumps(counted.metadata)


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_negative_or_nan_input_is_refused(bad: float) -> None:
    frames = np.full((2, 2, 8, 8), 50.0, np.float32)
    frames[1, 1, 3, 3] = bad
    counted = CountedSource(ArraySource(frames), _params())
    counted.read_rows(0, 1)  # the clean row is fine
    with pytest.raises(StempressError, match="rows \\[1, 2\\)"):
        counted.read_rows(1, 2)
    signed = np.full((1, 1, 8, 8), -3, np.int16)
    with pytest.raises(StempressError, match="negative"):
        count_frames(signed, _params())


@pytest.mark.parametrize("kw", [
    {"dark": np.zeros((64, 63))},
    {"gain": np.ones((32, 32))},
    {"gain": np.zeros((64, 64))},
    {"gain": np.full((64, 64), np.nan)},
    {"threshold_unit": "sigma", "read_noise": np.ones(64)},
])
def test_wrong_references_are_refused_before_reading(kw) -> None:
    with pytest.raises(StempressError, match="reference"):
        CountedSource(_integrating(2.0), _params(**kw))


@pytest.mark.parametrize("kw", [
    {"mode": "fast"}, {"connectivity": 3}, {"threshold": -1.0}, {"threshold_unit": "e"},
    {"threshold_unit": "sigma"}, {"cluster_count": "all"},
])
def test_bad_params_are_refused(kw) -> None:
    with pytest.raises(StempressError):
        _params(**kw)


def test_accuracy_checks_shapes_and_truth_source() -> None:
    with pytest.raises(StempressError, match="shape"):
        counting_accuracy(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 5)))
    with pytest.raises(StempressError, match="synthetic"):
        true_counts(ArraySource(np.zeros((1, 1, 4, 4), np.uint16)))
    spec = SyntheticSpec(scan=(2, 2), det=(16, 16), dose=50.0, mode="counting")
    exact = counting_accuracy(SyntheticSource(spec), SyntheticSource(spec))
    assert exact["total_error_percent"] == 0 and exact["exact_fraction"] == 1.0 and exact["pixel_rms"] == 0
