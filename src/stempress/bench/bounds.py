"""Information limits on the compression ratio, so a measured ratio can be judged against what is possible.

All bounds are compression RATIOS: the dtype's bits per value divided by the bits per value a model needs.
They are limits of a model, not of every codec: a codec that exploits what the model ignores (correlations
between neighbouring values, scan-position structure) may beat them; one that does not cannot.

- sparsity: the study's ``16 / H2(s)`` (Figure 3), with 16 replaced by the dtype's bits. Only the zero /
  non-zero mask is charged, so it is loose on dense data.
- order-0: the empirical entropy of the value histogram (values independent and identically distributed).
- Poisson: counts drawn from Poisson(lambda_i) with lambda_i the mean pattern (PAPER.md "Useful limits"); the
  entropy of one Poisson count is ``stempress.poisson``'s, shared with the entropy coder's model.
- true Poisson: the same with each value's own expected count (a synthetic cube's truth, ``expected`` beside the
  data of ``stempress simulate --truth``): what no coder of the counts can beat on average, whatever it models.
  Where contrast varies with scan position it lies below the mean-pattern bound, and a coder whose model ignores
  the scan falls short of it by the difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import entr

from stempress.data.base import row_spans
from stempress.errors import StempressError
from stempress.poisson import poisson_entropy_bits

_LN2 = math.log(2.0)


def binary_entropy(p: ArrayLike) -> np.ndarray | float:
    """H2(p) in bits; 0 at p = 0 and p = 1 (the limit), so a constant mask costs nothing."""
    p = np.asarray(p, dtype=np.float64)
    h = (entr(p) + entr(1.0 - p)) / _LN2
    h = np.where((p < 0) | (p > 1), np.nan, h)
    return float(h) if h.ndim == 0 else h


def sparsity_bound(sparsity: ArrayLike, bits: int) -> np.ndarray | float:
    """bits / H2(s): the study's 16 / H2(s) for the dtype's bits; infinite for an all-zero or zero-free mask."""
    h = np.asarray(binary_entropy(sparsity), dtype=np.float64)
    with np.errstate(divide="ignore"):
        ratio = np.where(h > 0, bits / np.where(h > 0, h, 1.0), np.inf)
    ratio = np.where(np.isnan(h), np.nan, ratio)
    return float(ratio) if ratio.ndim == 0 else ratio


def order0_entropy_bits(values: ArrayLike, counts: ArrayLike) -> float:
    """-sum p log2 p over a value histogram (duplicate values are merged), in bits per value."""
    values = np.asarray(values).ravel()
    counts = np.asarray(counts, dtype=np.float64).ravel()
    if values.shape != counts.shape:
        raise ValueError(f"{values.size} values but {counts.size} counts")
    if values.size and np.unique(values).size != values.size:
        _, inverse = np.unique(values, return_inverse=True)
        counts = np.bincount(inverse.ravel(), weights=counts)
    counts = counts[counts > 0]
    total = counts.sum()
    if total == 0:
        return float("nan")
    p = counts / total
    return float(-(p * np.log2(p)).sum())


def poisson_bound(mean_pattern: ArrayLike, bits: int) -> float:
    """bits / mean_i H(lambda_i): the ratio of an entropy coder that knows each pixel's mean count.

    The mean over scan positions hides scan-dependent structure, so a model that follows it does better;
    non-Poisson data (integrating detectors with gain, saturation) breaks the model's premise.
    """
    lam = np.asarray(mean_pattern, dtype=np.float64)
    if lam.size == 0:
        raise ValueError("empty mean pattern")
    per_value = float(np.mean(poisson_entropy_bits(lam)))
    return math.inf if per_value == 0 else bits / per_value


def true_poisson_bits(expected_blocks: Iterable[ArrayLike]) -> float:
    """Total Poisson entropy in bits of every value, each with its own expected count: sum_j H(lambda_j), summed
    block by block so a cube's truth never has to fit in memory."""
    return float(sum(float(np.sum(poisson_entropy_bits(np.asarray(b, dtype=np.float64)))) for b in expected_blocks))


def true_poisson_bound(expected_blocks: Iterable[ArrayLike], bits: int, n_values: int) -> float:
    """bits * n_values / sum_j H(lambda_j): the ratio of a coder that knows every value's expected count."""
    total = true_poisson_bits(expected_blocks)
    return math.inf if total == 0 else bits * n_values / total


def truth_blocks(path: str | Path, rows: int = 16) -> Iterable[np.ndarray]:
    """The expected-count map that ``stempress simulate --truth`` stored beside the cube (dataset ``expected`` in
    the cube's group), ``rows`` scan rows at a time."""
    import h5py

    from stempress.data.hdf5 import Hdf5Source

    with Hdf5Source(path) as located:
        where = located.dataset_path.rpartition("/")[0] + "/expected"
    with h5py.File(path, "r") as f:
        if where not in f:
            raise StempressError(f"{path}: no expected-count map at {where}; write the cube with "
                                 "`stempress simulate --truth`")
        expected = f[where]
        for start, stop in row_spans(expected.shape[0], rows):
            yield expected[start:stop]
