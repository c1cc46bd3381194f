"""Information limits on the compression ratio, so a measured ratio can be judged against what is possible.

All bounds are compression RATIOS: the dtype's bits per value divided by the bits per value a model needs.
They are limits of a model, not of every codec: a codec that exploits what the model ignores (correlations
between neighbouring values, scan-position structure) may beat them; one that does not cannot.

- sparsity: the study's ``16 / H2(s)`` (Figure 3), with 16 replaced by the dtype's bits. Only the zero /
  non-zero mask is charged, so it is loose on dense data.
- order-0: the empirical entropy of the value histogram (values independent and identically distributed).
- Poisson: counts drawn from Poisson(lambda_i) with lambda_i the mean pattern (PAPER.md "Useful limits").
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import entr, gammaln

from stempress.errors import StempressError

#: Above this mean the asymptotic expansion is used; its error there is below 2e-9 bits.
POISSON_ASYMPTOTIC_LAMBDA = 100.0
#: Poisson probabilities beyond this many standard deviations above the largest mean are dropped.
_TAIL_SIGMAS = 12.0
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


def poisson_entropy_bits(lam: ArrayLike) -> np.ndarray | float:
    """Entropy H(lambda) of a Poisson count in bits, element-wise.

    Exact sum over k (truncated 12 sigma above the mean) for lambda < 100, accurate down to tiny lambda
    where H ~ lambda * log2(e / lambda); the asymptotic expansion
    0.5*log2(2*pi*e*lambda) - (1/(12 lambda) + 1/(24 lambda^2) + 19/(360 lambda^3)) / ln 2 above.
    """
    lam = np.asarray(lam, dtype=np.float64)
    if np.any(lam < 0):
        raise StempressError("Poisson entropy needs mean counts >= 0; got a negative mean (not count data)")
    out = np.zeros_like(lam)
    out[np.isnan(lam)] = np.nan
    big = lam >= POISSON_ASYMPTOTIC_LAMBDA
    if np.any(big):
        x = lam[big]
        nats = 0.5 * np.log(2 * np.pi * np.e * x) - 1 / (12 * x) - 1 / (24 * x**2) - 19 / (360 * x**3)
        out[big] = nats / _LN2
    small = (lam > 0) & ~big
    if np.any(small):
        x = lam[small]
        log_x = np.log(x)
        top = float(x.max())
        k_max = math.ceil(top + _TAIL_SIGMAS * math.sqrt(top) + 30)
        nats = np.zeros_like(x)
        for k in range(k_max + 1):  # one pass per k keeps memory at the number of pixels
            log_p = k * log_x - x - gammaln(k + 1.0)
            nats -= np.exp(log_p) * log_p
        out[small] = nats / _LN2
    return float(out) if out.ndim == 0 else out


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
