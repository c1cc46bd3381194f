"""The entropy of a Poisson count, element-wise: pure numpy/scipy, below everything that needs it.

Why its own module at the bottom: the benchmark's information limits (``bench.bounds``) and the entropy coder's
model (its own bound) both need it, and the coder sits layers below the benchmark.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import gammaln

from stempress.errors import StempressError

#: Above this mean the asymptotic expansion is used; its error there is below 2e-9 bits.
POISSON_ASYMPTOTIC_LAMBDA = 100.0
#: Poisson probabilities beyond this many standard deviations above the largest mean are dropped.
_TAIL_SIGMAS = 12.0
#: ... and, for dark means, beyond the count where the largest mean's log-probability falls below this.
_TAIL_LOG_P = -55.0
_LN2 = math.log(2.0)


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
    low = 0.0
    for high in _BANDS:  # each band sums only as many k as its own largest mean needs (most counts are dark)
        band = (lam > low) & (lam <= high) & ~big
        low = high
        if np.any(band):
            out[band] = _poisson_sum_bits(lam[band])
    return float(out) if out.ndim == 0 else out


#: Upper edges of the bands of means whose entropies are summed together (the last reaches the asymptotic form).
_BANDS = (0.05, 0.5, 4.0, 20.0, POISSON_ASYMPTOTIC_LAMBDA)


def _poisson_sum_bits(x: np.ndarray) -> np.ndarray:
    """-sum_k p_k log2 p_k for means ``x`` > 0, truncated 12 sigma above the largest mean, or sooner for dark means
    where the largest mean's log p_k has fallen below ``_TAIL_LOG_P`` (the dropped terms are below 1e-20 bits)."""
    log_x = np.log(x)
    top = float(x.max())
    k_max = math.ceil(top + _TAIL_SIGMAS * math.sqrt(top) + 30)
    log_top = math.log(top)
    for k in range(math.ceil(top) + 1, k_max):
        if k * log_top - top - math.lgamma(k + 1.0) < _TAIL_LOG_P:
            k_max = k
            break
    nats = np.zeros_like(x)
    for k in range(k_max + 1):  # one pass per k keeps memory at the number of pixels
        log_p = k * log_x - x - gammaln(k + 1.0)
        nats -= np.exp(log_p) * log_p
    return nats / _LN2
