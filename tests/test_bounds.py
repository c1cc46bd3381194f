"""Entropy limits: closed forms, brute-force Poisson sums, and a drawn Poisson cube."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import gammaln
from scipy.stats import poisson

from stempress.bench.bounds import (
    binary_entropy,
    order0_entropy_bits,
    poisson_bound,
    sparsity_bound,
    true_poisson_bits,
    true_poisson_bound,
    truth_blocks,
)
from stempress.bench.inventory import profile_dataset
from stempress.data.base import ArraySource
from stempress.errors import StempressError
from stempress.poisson import POISSON_ASYMPTOTIC_LAMBDA, poisson_entropy_bits


def brute_poisson_bits(lam: float) -> float:
    """-sum p log2 p over a range far wider than the distribution."""
    k = np.arange(0, int(lam + 40 * math.sqrt(lam) + 80))
    log_p = k * math.log(lam) - lam - gammaln(k + 1)
    p = np.exp(log_p)
    return float(-(p * log_p).sum() / math.log(2))


def test_binary_entropy_is_symmetric_and_zero_at_the_ends():
    p = np.linspace(0, 1, 101)
    assert np.allclose(binary_entropy(p), binary_entropy(1 - p))
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.1) == pytest.approx(-(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9)))
    assert math.isnan(binary_entropy(1.5))


def test_sparsity_bound_scales_the_study_formula_to_the_dtype():
    assert sparsity_bound(0.5, 16) == 16.0
    assert sparsity_bound(0.5, 8) == 8.0
    # the study's 4D_EELS (s = 0.928317): 16 / H2(s) ~ 43x, above its best measured 34.9x
    assert sparsity_bound(0.928317, 16) == pytest.approx(42.99, abs=0.01)
    assert sparsity_bound(0.0, 16) == math.inf and sparsity_bound(1.0, 16) == math.inf
    assert np.allclose(sparsity_bound([0.5, 0.9], 32), [32.0, 32 / binary_entropy(0.9)])


def test_order0_entropy_of_histograms():
    assert order0_entropy_bits([0, 1, 2, 3], [10, 10, 10, 10]) == pytest.approx(2.0)
    assert order0_entropy_bits([7], [123]) == 0.0
    assert order0_entropy_bits([1.5, 2.5, 1.5], [1, 2, 1]) == pytest.approx(1.0)  # duplicates merged
    assert order0_entropy_bits([0, 1, 2], [3, 0, 1]) == pytest.approx(binary_entropy(0.25))
    with pytest.raises(ValueError):
        order0_entropy_bits([1, 2], [1])


@pytest.mark.parametrize("lam", [1e-4, 0.1, 1.0, 10.0, 99.0, 1000.0])
def test_poisson_entropy_matches_brute_force_sum(lam):
    assert poisson_entropy_bits(lam) == pytest.approx(brute_poisson_bits(lam), rel=1e-9, abs=1e-15)
    assert poisson_entropy_bits(lam) == pytest.approx(poisson(lam).entropy() / math.log(2), rel=1e-8)


def test_poisson_entropy_small_lambda_limit_and_edges():
    for lam in (1e-8, 1e-6, 1e-4):
        assert poisson_entropy_bits(lam) == pytest.approx(lam * math.log2(math.e / lam), rel=10 * lam)
    assert poisson_entropy_bits(0.0) == 0.0
    # both branches agree where they meet
    below = poisson_entropy_bits(np.nextafter(POISSON_ASYMPTOTIC_LAMBDA, 0))
    assert poisson_entropy_bits(POISSON_ASYMPTOTIC_LAMBDA) == pytest.approx(below, abs=1e-8)
    values = poisson_entropy_bits(np.array([[0.0, 1e-3], [5.0, 500.0]]))
    assert values.shape == (2, 2)
    assert np.all(np.diff(values.ravel()) > 0)  # entropy grows with the mean
    with pytest.raises(StempressError, match="negative"):
        poisson_entropy_bits([1.0, -0.5])


def test_poisson_bound_averages_pixel_entropies():
    pattern = np.array([[0.0, 0.1], [1.0, 10.0]])
    per_value = np.mean([poisson_entropy_bits(v) for v in pattern.ravel()])
    assert poisson_bound(pattern, 16) == pytest.approx(16 / per_value)
    assert poisson_bound(np.zeros((3, 3)), 16) == math.inf


@pytest.mark.parametrize("lam", [0.05, 2.0, 30.0])
def test_drawn_poisson_cube_has_the_poisson_entropy(lam):
    cube = np.random.default_rng(5).poisson(lam, size=(16, 16, 32, 32)).astype(np.uint16)
    profile = profile_dataset(ArraySource(cube, name="poisson"), rows=5)
    expected = poisson_entropy_bits(lam)
    assert profile.entropy_order0_bits == pytest.approx(expected, abs=0.01)
    assert profile.poisson_bits_per_value == pytest.approx(expected, abs=0.01)
    assert profile.bounds["order0"] == pytest.approx(profile.bounds["poisson"], rel=0.02)


def test_true_bound_sums_each_values_own_entropy_and_sits_below_the_mean_pattern_bound():
    """Scan contrast: half the positions see lambda 0.1, half 3.0 at the same pixel; the mean pattern's bound
    charges both halves the mixture's entropy, the true bound each its own."""
    expected = np.empty((2, 4, 2, 2))
    expected[0], expected[1] = 0.1, 3.0
    bits = true_poisson_bits([expected[:1], expected[1:]])  # block by block
    assert bits == pytest.approx(16 * (poisson_entropy_bits(0.1) + poisson_entropy_bits(3.0)))
    ratio = true_poisson_bound(iter([expected]), 8, expected.size)
    assert ratio == pytest.approx(8 * expected.size / bits)
    assert ratio > poisson_bound(expected.mean(axis=(0, 1)), 8)
    assert true_poisson_bound([np.zeros((1, 1, 2, 2))], 8, 4) == math.inf


def test_truth_blocks_read_the_map_simulate_truth_stores(tmp_path):
    from stempress.data.suites import open_synthetic
    from stempress.store.write import write_hdf5

    source = open_synthetic("synthetic:counted/counted?scan=4x3&det=32x32&dose=300")
    path = write_hdf5(source, tmp_path / "truth.emd", truth=True)
    stored = np.concatenate(list(truth_blocks(path, rows=3)))
    assert np.array_equal(stored, source.expected_rows(0, 4).astype(np.float32))
    plain = write_hdf5(source, tmp_path / "plain.emd")
    with pytest.raises(StempressError, match="simulate --truth"):
        list(truth_blocks(plain))
