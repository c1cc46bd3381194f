"""Measuring where the beam is on the detector and how big the bright-field disk is.

Virtual detectors and CoM are defined relative to the beam centre and the BF disk, so these come first:
from the source's metadata when it carries them (``data.calibration.Calibration``, the one calibration
type), else measured here on the mean pattern, or given by the user. Running that measurement over a source
(``calibrate``, ``source_calibration``, ``given_calibration``) is an engine pass: ``store.reducing``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from stempress.data.calibration import Calibration
from stempress.errors import StempressError


def find_bf_disk(pattern: np.ndarray, iterations: int = 4) -> tuple[float, float, float]:
    """Centre (y, x) and radius in pixels of the bright-field disk of a mean (or summed) pattern.

    Why this way: a diffuse halo can make the disk's middle far brighter than its rim, so no fixed fraction of
    the maximum finds the rim. A 3x3 median removes hot pixels; the rim is where the radial profile (around
    the pattern's centre of mass) falls most steeply in log; then each pass takes the plateau just inside the
    rim and the background just outside, turns the pattern into a 0..1 disk fraction, and takes its centre of
    mass and area (r = sqrt(area / pi)): sub-pixel, indifferent to soft edges and to the halo.
    """
    p = usable_pattern(pattern)
    if p.ndim != 2 or p.size == 0 or p.max() <= 0:
        raise StempressError("the mean pattern has no positive signal, so the bright-field disk cannot be found; "
                             f"give the beam centre and BF radius in detector pixels ({GIVE_CALIBRATION})")
    smooth = ndimage.median_filter(p, size=3, mode="nearest") if min(p.shape) >= 3 else p
    if smooth.max() <= 0:  # too sparse for a median: fall back to the raw pattern
        smooth = p
    yy, xx = np.indices(p.shape, dtype=np.float64)
    total = smooth.sum()
    cy, cx = float((smooth * yy).sum() / total), float((smooth * xx).sum() / total)
    radius = _rim(smooth, np.hypot(yy - cy, xx - cx))
    for _ in range(iterations):
        rr = np.hypot(yy - cy, xx - cx)
        inside = (rr >= max(0.0, radius - 2.0)) & (rr < radius - 0.5)
        outside = (rr >= radius + 1.0) & (rr < radius + 2.5)
        top = float(np.median(smooth[inside])) if inside.any() else float(smooth[rr < radius].max())
        bottom = float(np.median(smooth[outside])) if outside.any() else 0.0
        if top <= bottom:
            break
        frac = np.clip((smooth - bottom) / (top - bottom), 0.0, 1.0) * (rr < radius + 2.5)
        area = float(frac.sum())
        if area <= 0:
            break
        cy, cx = float((frac * yy).sum() / area), float((frac * xx).sum() / area)
        radius = math.sqrt(area / math.pi)
    return cy, cx, radius


#: How a user gives what cannot be measured, on the command line and in Python.
GIVE_CALIBRATION = "--centre Y,X --bf-radius R; calibration=given_calibration(...) in Python"


def usable_pattern(pattern: np.ndarray) -> np.ndarray:
    """A mean pattern as float64 with NaN / infinite pixels (dead or masked) and negative means (dark-subtracted
    background, read noise around zero) set to 0: they carry no beam, and the disk is found on the rest."""
    p = np.asarray(pattern, np.float64)
    return np.where(np.isfinite(p), np.maximum(p, 0.0), 0.0)


def _rim(pattern: np.ndarray, rr: np.ndarray) -> float:
    """Radius of the innermost steep fall of the log radial profile (1-pixel rings): the first local
    minimum of its slope at least half as steep as the steepest; Bragg disks overlapping the BF disk in
    a thick crystal can end in a fall as steep as the BF rim, but further out."""
    rings = rr.astype(np.int64).ravel()
    counts = np.bincount(rings)
    profile = np.bincount(rings, pattern.ravel()) / np.maximum(counts, 1)
    if profile.size < 3:
        return max(1.0, float(profile.size) / 2)
    level = np.log(profile + 0.01 * profile.max())
    fall = np.concatenate([[0.0], level[2:] - level[:-2], [0.0]])  # fall[i] centred on ring i
    steep = fall <= 0.5 * fall.min()
    minima = np.flatnonzero(steep[1:-1] & (fall[1:-1] <= fall[:-2]) & (fall[1:-1] <= fall[2:])) + 1
    return float(minima[0] if minima.size else np.argmin(fall)) + 0.5


def estimate_calibration(pattern: np.ndarray, metadata: Mapping[str, Any] | None = None) -> Calibration:
    """Centre and BF radius measured on ``pattern``; pixel sizes and units from ``metadata``."""
    p = np.asarray(pattern)
    base = Calibration.from_metadata(metadata or {}, p.shape)
    cy, cx, radius = find_bf_disk(p)
    return dataclasses.replace(base, centre_y=cy, centre_x=cx, bf_radius_px=radius, origin="mean pattern")

