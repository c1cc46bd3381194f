"""Where the beam is on the detector, how big the bright-field disk is, and what a pixel means.

Virtual detectors and CoM are defined relative to the beam centre and the BF disk, so these come first:
from the source's metadata when it carries them, else measured on the mean pattern. Angles are in mrad
when the source's Q calibration is an angle (mrad, rad, urad, deg); detector pixels otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from stempress.errors import StempressError

#: Angular units the Q calibration may come in, as mrad per unit.
MRAD_PER_UNIT = {"mrad": 1.0, "rad": 1000.0, "urad": 1e-3, "µrad": 1e-3, "deg": 1000 * math.pi / 180,
                 "degree": 1000 * math.pi / 180, "degrees": 1000 * math.pi / 180}
PIXEL_UNITS = ("px", "pixel", "pixels")


@dataclass(frozen=True)
class Calibration:
    """Detector geometry for the reducers; ``origin`` records where the centre and radius came from."""

    centre_y: float
    centre_x: float
    bf_radius_px: float | None = None
    q_pixel_size: float = 1.0
    q_units: str = "pixels"
    r_pixel_size: float = 1.0
    r_units: str = "pixels"
    det_shape: tuple[int, int] | None = None
    origin: str = "geometry"

    @property
    def angular(self) -> bool:
        """Whether detector pixels convert to scattering angles (mrad)."""
        return self.q_units == "mrad"

    @property
    def angle_units(self) -> str:
        return "mrad" if self.angular else "px"

    def to_angle(self, px: Any) -> Any:
        """Detector pixels to mrad when the Q calibration is angular, else unchanged (pixels)."""
        return np.multiply(px, self.q_pixel_size) if self.angular else np.multiply(px, 1.0)

    def to_pixels(self, value: float, units: str) -> float:
        """A radius in ``px``, in ``bf`` (multiples of the BF radius) or in an angle unit, as pixels."""
        if units in PIXEL_UNITS:
            return float(value)
        if units == "bf":
            if self.bf_radius_px is None:
                raise StempressError("a radius is given in BF-disk units but the calibration has no BF radius; "
                                     "give it (--bf-radius; calibrate(source) in Python) or give radii in px")
            return float(value) * self.bf_radius_px
        if units in MRAD_PER_UNIT:
            if not self.angular:
                raise StempressError(f"a radius is given in {units} but the detector is calibrated in {self.q_units}, "
                                     "not an angle; give radii in px or 'bf', or a Q calibration in mrad")
            return float(value) * MRAD_PER_UNIT[units] / self.q_pixel_size
        raise StempressError(f"unknown radius units {units!r}; use px, bf, or an angle ({', '.join(MRAD_PER_UNIT)})")

    def checked(self, det_shape: tuple[int, ...]) -> Calibration:
        """This calibration, refusing one made for another detector size."""
        det = (int(det_shape[0]), int(det_shape[1]))
        if self.det_shape is not None and tuple(self.det_shape) != det:
            raise StempressError(f"calibration is for a {self.det_shape[0]}x{self.det_shape[1]} detector but the "
                                 f"data has {det[0]}x{det[1]} pixels; calibrate this data (calibrate(source))")
        return self if self.det_shape is not None else dataclasses.replace(self, det_shape=det)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for provenance."""
        out = dataclasses.asdict(self)
        out["det_shape"] = None if self.det_shape is None else list(self.det_shape)
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], det_shape: tuple[int, ...]) -> Calibration:
        """What a source carries: pixel sizes (emdfile ``calibration`` group or top-level keys), and the
        disk centre / radius where known (synthetic ``bf_disk_*_px``, py4DSTEM ``qx0_mean``/``qy0_mean``/
        ``probe_semiangle``); otherwise the detector's geometric centre and no radius."""
        from stempress.data.emd import calibration_from  # the store owns the metadata conventions

        det = (int(det_shape[0]), int(det_shape[1]))
        pixel = calibration_from(metadata)
        q_size, q_units = _normalise_q(pixel.Q_pixel_size, pixel.Q_pixel_units)
        nested = metadata.get("calibration")
        found = {**(dict(nested) if isinstance(nested, Mapping) else {}), **metadata}
        centre = (det[0] - 1) / 2.0, (det[1] - 1) / 2.0
        origin = "geometry"
        if _pair(found.get("bf_disk_center_px")) is not None:
            centre, origin = _pair(found["bf_disk_center_px"]), "metadata"  # type: ignore[assignment]
        elif _number(found.get("qx0_mean")) is not None and _number(found.get("qy0_mean")) is not None:
            centre, origin = (float(found["qx0_mean"]), float(found["qy0_mean"])), "metadata"  # py4DSTEM: qx = rows
        radius = _number(found.get("bf_disk_radius_px"))
        if radius is None:
            radius = _number(found.get("probe_semiangle"))
        return cls(centre[0], centre[1], radius, q_size, q_units, pixel.R_pixel_size, pixel.R_pixel_units,
                   det, origin)


def _normalise_q(size: float, units: str) -> tuple[float, str]:
    """Angles become mrad; pixels become 'pixels'; anything else (1/A, eV) stays as given."""
    key = units.strip()
    if key in MRAD_PER_UNIT:
        return size * MRAD_PER_UNIT[key], "mrad"
    if key in PIXEL_UNITS:
        return size, "pixels"
    return size, key


def _number(value: Any) -> float | None:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value) if math.isfinite(float(value)) and float(value) > 0 else None


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list | tuple | np.ndarray) and len(value) == 2:
        try:
            a, b = float(value[0]), float(value[1])
        except (TypeError, ValueError):
            return None
        if math.isfinite(a) and math.isfinite(b):
            return a, b
    return None


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
