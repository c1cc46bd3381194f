"""What a pixel means: the one calibration a source carries, its archive stores and the reducers use.

Scan (R) step and units, detector (Q) pixel size and units, and, where known, the detector geometry the
reducers need (beam centre, bright-field disk radius, detector shape). Readers produce it (the metadata
conventions of emdfile/py4DSTEM, EMD 0.x dim vectors, synthetic top-level keys are read here, once), the
archive writes its EMD fields, and virtual detectors and CoM work relative to its centre. Angles are held
in mrad (a source's rad, urad or deg are converted on reading); anything else (1/A, eV) stays as given.
Measuring the centre and radius on a mean pattern is the reducers' job (``reduce.calibration``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stempress.errors import StempressError

#: Angular units the Q calibration may come in, as mrad per unit.
MRAD_PER_UNIT = {"mrad": 1.0, "rad": 1000.0, "urad": 1e-3, "µrad": 1e-3, "deg": 1000 * math.pi / 180,
                 "degree": 1000 * math.pi / 180, "degrees": 1000 * math.pi / 180}
PIXEL_UNITS = ("px", "pixel", "pixels")
#: The EMD calibration fields py4DSTEM's writer always has; the defaults are py4DSTEM's for uncalibrated data.
DEFAULT_CALIBRATION: dict[str, Any] = {
    "Q_pixel_size": 1.0, "R_pixel_size": 1.0, "Q_pixel_units": "pixels", "R_pixel_units": "pixels",
    "QR_flip": False,
}
#: Metadata keys that give the beam centre and BF radius in detector pixels: ours, then py4DSTEM's.
GEOMETRY_KEYS = ("bf_disk_center_px", "bf_disk_radius_px", "qx0_mean", "qy0_mean", "probe_semiangle")
#: Scalar metadata ``write_hdf5`` also stores as attributes of the datacube's group, and reads back from there.
CALIBRATION_KEYS = ("R_pixel_size", "R_pixel_units", "Q_pixel_size", "Q_pixel_units", "synthetic")

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Calibration:
    """Pixel sizes and units of both spaces, and the beam centre / BF radius in detector pixels where known;
    ``origin`` records where the centre and radius came from (geometry, metadata, mean pattern, given)."""

    centre_y: float | None = None
    centre_x: float | None = None
    bf_radius_px: float | None = None
    q_pixel_size: float = 1.0
    q_units: str = "pixels"
    r_pixel_size: float = 1.0
    r_units: str = "pixels"
    det_shape: tuple[int, int] | None = None
    origin: str = "geometry"
    qr_flip: bool = False
    #: Other scalar calibration fields the source carried (e.g. ``QR_rotation_degrees``), kept for the archive.
    #: The geometry keys are not among them: they are the fields above.
    extra: dict[str, Scalar] = field(default_factory=dict)

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
        """This calibration for a detector of ``det_shape``: refused if made for another size; the shape and
        (when unknown) the geometric centre filled in."""
        det = (int(det_shape[0]), int(det_shape[1]))
        if self.det_shape is not None and tuple(self.det_shape) != det:
            raise StempressError(f"calibration is for a {self.det_shape[0]}x{self.det_shape[1]} detector but the "
                                 f"data has {det[0]}x{det[1]} pixels; calibrate this data (calibrate(source))")
        if self.det_shape is not None and self.centre_y is not None and self.centre_x is not None:
            return self
        cy = self.centre_y if self.centre_y is not None else (det[0] - 1) / 2.0
        cx = self.centre_x if self.centre_x is not None else (det[1] - 1) / 2.0
        return dataclasses.replace(self, det_shape=det, centre_y=cy, centre_x=cx)

    @property
    def knows_centre(self) -> bool:
        """Whether the centre is knowledge (metadata, measured, given), not the detector's geometric middle."""
        return self.origin != "geometry" and self.centre_y is not None and self.centre_x is not None

    def _pixel_fields(self) -> dict[str, Any]:
        return {"Q_pixel_size": self.q_pixel_size, "R_pixel_size": self.r_pixel_size, "Q_pixel_units": self.q_units,
                "R_pixel_units": self.r_units, "QR_flip": self.qr_flip, **self.extra}

    def emd_fields(self) -> dict[str, Any]:
        """The calibration under emdfile/py4DSTEM's names, in the order their example file lists them; a
        known centre and radius as py4DSTEM keeps them (``qx0_mean`` = rows, ``probe_semiangle``, in pixels)."""
        out = self._pixel_fields()
        if self.knows_centre:
            out["qx0_mean"], out["qy0_mean"] = float(self.centre_y), float(self.centre_x)  # type: ignore[arg-type]
        if self.bf_radius_px is not None:
            out["probe_semiangle"] = float(self.bf_radius_px)
        return out

    def to_metadata(self) -> dict[str, Any]:
        """The metadata ``from_metadata`` rebuilds this from, as event files store it: pixel sizes under EMD's
        names, and the centre / radius where known under ours (``bf_disk_center_px``, ``bf_disk_radius_px``)."""
        out = self._pixel_fields()
        if self.knows_centre:
            out["bf_disk_center_px"] = [self.centre_y, self.centre_x]
        if self.bf_radius_px is not None:
            out["bf_disk_radius_px"] = self.bf_radius_px
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for provenance (``Calibration(**d)`` rebuilds it, det_shape made a tuple again)."""
        out = dataclasses.asdict(self)
        out["det_shape"] = None if self.det_shape is None else list(self.det_shape)
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], det_shape: tuple[int, ...] | None = None) -> Calibration:
        """What a source carries: pixel sizes (emdfile's ``metadata["calibration"]``, else top-level keys as
        synthetic sources give them, else 1 pixel per pixel), and the disk centre / radius where known
        (``bf_disk_*_px``, py4DSTEM's ``qx0_mean``/``qy0_mean``/``probe_semiangle``); otherwise, given the
        detector's shape, its geometric centre and no radius. A size that is not a positive finite number is not
        a calibration, so it and its units fall back together."""
        nested = metadata.get("calibration")
        found: dict[str, Any] = dict(nested) if isinstance(nested, Mapping) else {}
        for key in DEFAULT_CALIBRATION:
            if key not in found and key in metadata:
                found[key] = metadata[key]
        sizes: dict[str, tuple[float, str]] = {}
        for axis in ("R", "Q"):
            size, units = found.get(f"{axis}_pixel_size"), found.get(f"{axis}_pixel_units")
            sizes[axis] = ((float(size), str(units) if units is not None else "pixels") if _number(size) is not None
                           else (1.0, "pixels"))
        q_size, q_units = _normalise_q(*sizes["Q"])
        flip = found.get("QR_flip")
        extra = {str(k): _scalar(v) for k, v in found.items()
                 if k not in DEFAULT_CALIBRATION and k not in GEOMETRY_KEYS and not str(k).startswith("_")
                 and _scalar(v) is not None}
        geometry = {**found, **metadata}
        centre: tuple[float | None, float | None] = (None, None)
        origin = "geometry"
        if _pair(geometry.get("bf_disk_center_px")) is not None:
            centre, origin = _pair(geometry["bf_disk_center_px"]), "metadata"  # type: ignore[assignment]
        elif _number(geometry.get("qx0_mean")) is not None and _number(geometry.get("qy0_mean")) is not None:
            centre, origin = (float(geometry["qx0_mean"]), float(geometry["qy0_mean"])), "metadata"  # qx = rows
        radius = _number(geometry.get("bf_disk_radius_px"))
        if radius is None:
            radius = _number(geometry.get("probe_semiangle"))
        cal = cls(centre[0], centre[1], radius, q_size, q_units, sizes["R"][0], sizes["R"][1], None, origin,
                  bool(flip) if isinstance(flip, bool | np.bool_) else False,
                  extra)  # type: ignore[arg-type]
        return cal if det_shape is None else cal.checked(det_shape)


def chosen_calibration(own: Calibration | None, given: Calibration | None,
                       det_shape: tuple[int, ...]) -> Calibration:
    """A reducer's own calibration wins; else the engine's; else the detector's geometric centre."""
    cal = own if own is not None else given
    return (cal if cal is not None else Calibration()).checked(det_shape)


def radius_map(det_shape: tuple[int, ...], calibration: Calibration) -> np.ndarray:
    """Distance in pixels of every pixel centre (index coordinates) from the beam centre."""
    dy, dx = int(det_shape[0]), int(det_shape[1])
    cy = calibration.centre_y if calibration.centre_y is not None else (dy - 1) / 2.0
    cx = calibration.centre_x if calibration.centre_x is not None else (dx - 1) / 2.0
    yy, xx = np.indices((dy, dx), dtype=np.float64)
    return np.hypot(yy - cy, xx - cx)


def normalise_units(text: str | None) -> str:
    """A unit as py4DSTEM spells it: EMD 0.x brackets dropped, Å written A ('[Å^-1]' -> 'A^-1', '1/Å' -> 'A^-1')."""
    unit = (text or "").strip().strip("[]").strip().replace("Å", "A")
    return {"1/A": "A^-1", "A-1": "A^-1", "1/nm": "nm^-1", "px": "pixels", "pixel": "pixels", "": "pixels"}.get(
        unit, unit)


def calibration_from_dims(dims: list[dict[str, Any]], shape: tuple[int, ...]) -> dict[str, Any]:
    """R (scan) and Q (detector) pixel sizes from a 4-D array's dim vectors (EMD 0.x, Prismatic, emdfile), for
    each space whose two axes are linear with one step and one unit; a space in pixels, or whose axes disagree,
    stays uncalibrated."""
    found: dict[str, Any] = {}
    for space, axes in (("R", (0, 1)), ("Q", (2, 3))):
        steps = [_linear_step(dims[a], shape[a]) for a in axes]
        units = {normalise_units(dims[a]["units"]) for a in axes}
        if None in steps or len(units) != 1 or units == {"pixels"}:
            continue
        if not math.isclose(steps[0], steps[1], rel_tol=1e-4):  # type: ignore[arg-type]
            continue
        found[f"{space}_pixel_size"] = steps[0]
        found[f"{space}_pixel_units"] = units.pop()
    return found


def _linear_step(dim: dict[str, Any], size: int) -> float | None:
    """The step of a linear axis of ``size`` samples (emdfile stores only its first two values), else None."""
    v = np.asarray(dim["values"], np.float64)
    if v.size < 2 or not np.isfinite(v).all():
        return None
    step = float(v[1] - v[0])
    if v.size > 2 and (v.size != size or not np.allclose(np.diff(v), step, rtol=1e-4, atol=0)):
        return None
    return float(f"{step:.{dim.get('digits', 15)}g}") if step > 0 else None


def _normalise_q(size: float, units: str) -> tuple[float, str]:
    """Angles become mrad; pixels become 'pixels'; anything else (1/A, eV) stays as given."""
    key = units.strip()
    if key in MRAD_PER_UNIT:
        return size * MRAD_PER_UNIT[key], "mrad"
    if key in PIXEL_UNITS:
        return size, "pixels"
    return size, key


def _number(value: Any) -> float | None:
    """A positive finite number as float (bools are not numbers here), else None."""
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


def _scalar(value: Any) -> Scalar | None:
    """A value emdfile can store as a scalar dataset, as plain Python; None for anything else."""
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, str | int | float | bool) else None
