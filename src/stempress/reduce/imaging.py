"""Imaging reducers: mean and max patterns, virtual detectors, centre of mass, and DPC from the CoM field.

These are the task summaries of the study's part 2: a BF, ADF or HAADF image or a CoM map costs a few bytes
per scan position instead of a frame. Virtual detectors, CoM and the mean pattern are ``LinearReducer`` s,
so the engine computes all of them with one matrix product per block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stempress.data.base import Block
from stempress.errors import StempressError
from stempress.reduce.calibration import Calibration
from stempress.reduce.protocol import LinearReducer, OutputSpec, Reducer, Shape4, State

#: Where the default HAADF detector starts when the detector reaches that far and is calibrated in mrad.
HAADF_INNER_MRAD = 50.0


def _calibration(own: Calibration | None, given: Calibration | None, det_shape: tuple[int, ...]) -> Calibration:
    """The reducer's own calibration wins; else the engine's; else the detector's geometric centre."""
    cal = own if own is not None else given
    if cal is None:
        cal = Calibration.from_metadata({}, det_shape)
    return cal.checked(det_shape)


def radius_map(det_shape: tuple[int, ...], calibration: Calibration) -> np.ndarray:
    """Distance in pixels of every pixel centre (index coordinates) from the beam centre."""
    yy, xx = np.indices((int(det_shape[0]), int(det_shape[1])), dtype=np.float64)
    return np.hypot(yy - calibration.centre_y, xx - calibration.centre_x)


# -- detectors ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Annulus:
    """Pixels with ``inner <= r < outer`` around the beam centre; radii in ``px``, ``bf`` (multiples of the
    BF radius) or an angle unit such as ``mrad`` (needs an angular Q calibration)."""

    name: str
    inner: float
    outer: float = math.inf
    units: str = "px"

    def radii_px(self, calibration: Calibration) -> tuple[float, float]:
        inner = calibration.to_pixels(self.inner, self.units)
        outer = math.inf if math.isinf(self.outer) else calibration.to_pixels(self.outer, self.units)
        if not 0 <= inner < outer:
            raise StempressError(f"detector {self.name!r}: radii {self.inner}..{self.outer} {self.units} must "
                                 "satisfy 0 <= inner < outer")
        return inner, outer

    def weights(self, det_shape: tuple[int, ...], calibration: Calibration) -> np.ndarray:
        inner, outer = self.radii_px(calibration)
        r = radius_map(det_shape, calibration)
        return ((r >= inner) & (r < outer)).astype(np.float64)

    def describe(self, calibration: Calibration | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": "annulus", "inner": self.inner,
                               "outer": None if math.isinf(self.outer) else self.outer, "units": self.units}
        if calibration is not None:
            inner, outer = self.radii_px(calibration)
            out["inner_px"], out["outer_px"] = inner, None if math.isinf(outer) else outer
            if calibration.angular:
                out["inner_mrad"] = float(calibration.to_angle(inner))
                out["outer_mrad"] = None if math.isinf(outer) else float(calibration.to_angle(outer))
        return out


@dataclass(frozen=True, eq=False)
class Mask:
    """An arbitrary detector: a boolean or float weight per detector pixel (float weights cost the float32
    fast path for every detector fused with it)."""

    name: str
    values: np.ndarray = field(repr=False)

    def weights(self, det_shape: tuple[int, ...], calibration: Calibration) -> np.ndarray:
        values = np.asarray(self.values, np.float64)
        if values.shape != tuple(det_shape):
            raise StempressError(f"mask {self.name!r} is {values.shape}, the detector is {tuple(det_shape)}; "
                                 "give a mask of the detector's shape")
        return values

    def describe(self, calibration: Calibration | None = None) -> dict[str, Any]:
        values = np.asarray(self.values)
        return {"name": self.name, "kind": "mask", "shape": list(values.shape), "dtype": str(values.dtype),
                "nonzero": int(np.count_nonzero(values)), "sum": float(values.sum())}


Detector = Annulus | Mask


def bf(outer: float = 1.0) -> Annulus:
    """Bright field: the disk of the BF radius (times ``outer``)."""
    return Annulus("BF", 0.0, outer, "bf")


def abf(inner: float = 0.5, outer: float = 1.0) -> Annulus:
    """Annular bright field: the outer half of the BF disk."""
    return Annulus("ABF", inner, outer, "bf")


def adf(inner: float = 1.1, outer: float = 3.0, units: str = "bf") -> Annulus:
    """Annular dark field, by default just outside the BF disk to three BF radii."""
    return Annulus("ADF", inner, outer, units)


def haadf(inner: float = HAADF_INNER_MRAD, outer: float = math.inf, units: str = "mrad") -> Annulus:
    """High-angle annular dark field, by default everything beyond 50 mrad."""
    return Annulus("HAADF", inner, outer, units)


def default_detectors(calibration: Calibration) -> list[Annulus]:
    """BF, ADF and HAADF fitted to the detector (in px): BF = the disk; ADF from 1.1 BF radii; HAADF from
    50 mrad where that lies on the detector, else from 3 BF radii, or halfway from the ADF's inner radius to
    the detector edge when 3 BF radii do not fit; HAADF reaches the corners."""
    if calibration.bf_radius_px is None or calibration.det_shape is None:
        raise StempressError("default detectors need the BF disk radius and the detector shape; "
                             "use calibrate(source) or estimate_calibration(mean_pattern)")
    bf_px = calibration.bf_radius_px
    dy, dx = calibration.det_shape
    cy, cx = calibration.centre_y, calibration.centre_x
    edge = min(cy + 0.5, dy - 0.5 - cy, cx + 0.5, dx - 0.5 - cx)
    reach = float(radius_map((dy, dx), calibration).max())
    inner = 1.1 * bf_px
    if inner >= reach:
        raise StempressError(f"the BF disk (radius {bf_px:.1f} px) fills the detector; no dark field is left "
                             "for ADF/HAADF; give detectors explicitly")
    if edge <= inner:
        edge = reach
    split = 3 * bf_px if 3 * bf_px < edge else (inner + edge) / 2
    if calibration.angular:
        at = HAADF_INNER_MRAD / calibration.q_pixel_size
        if 1.5 * inner <= at < edge:
            split = at
    return [Annulus("BF", 0.0, bf_px), Annulus("ADF", inner, split), Annulus("HAADF", split, math.inf)]


# -- pattern reducers --------------------------------------------------------------------------------------
class MeanPattern(LinearReducer):
    """The mean diffraction pattern, from a float64 sum: bit-identical whatever the blocking for counts."""

    def __init__(self, name: str = "mean_pattern"):
        self.name = name

    def outputs(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        return {"mean": OutputSpec("pixel", "float64", units="counts", description="mean pattern")}

    def accumulators(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        return {"sum": OutputSpec("pixel", "float64", units="counts"), "frames": OutputSpec("single", "int64")}

    def weights(self, state: State) -> np.ndarray:
        return np.zeros((state.shape[2] * state.shape[3], 0))

    def pattern_buffer(self, state: State) -> np.ndarray:
        return state.buffers["sum"].reshape(-1)  # a view: the projection adds into the state

    def consume(self, state: State, block: Block, products: np.ndarray) -> None:
        state.local(block)
        # frames that arrived: a stream's missing ones (zeroed by the row pass) are not part of the mean
        state.buffers["frames"] += (block.data.shape[0] * block.data.shape[1] if block.valid is None
                                    else int(np.count_nonzero(block.valid)))

    def finish(self, state: State) -> dict[str, np.ndarray]:
        frames = int(state.buffers["frames"])
        if frames == 0:
            raise StempressError("the mean pattern saw no frames; feed it at least one block")
        return {"mean": state.buffers["sum"] / frames}


class MaxPattern(Reducer):
    """The brightest value of every detector pixel over the scan (Bragg disks, hot pixels)."""

    def __init__(self, name: str = "max_pattern"):
        self.name = name

    def outputs(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        return {"max": OutputSpec("pixel", np.dtype(dtype).name, units="counts", merge="max")}

    def process(self, state: State, block: Block) -> None:
        state.local(block)
        np.maximum(state.buffers["max"], block.data.max(axis=(0, 1)), out=state.buffers["max"])


# -- virtual detectors -------------------------------------------------------------------------------------
class VirtualDetectors(LinearReducer):
    """One image per detector: the sum of each frame over the detector's pixels (exact for counts)."""

    def __init__(self, detectors: Sequence[Detector], *, calibration: Calibration | None = None,
                 name: str = "virtual"):
        self.detectors = list(detectors)
        self.calibration = calibration
        self.name = name
        names = [d.name for d in self.detectors]
        if not names or len(set(names)) != len(names) or not all(names):
            raise StempressError(f"virtual detectors need distinct, non-empty names; got {names}")

    def outputs(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        return {d.name: OutputSpec("position", "float64", units="counts", description=f"{d.name} image")
                for d in self.detectors}

    def masks(self, det_shape: tuple[int, ...], calibration: Calibration | None = None) -> dict[str, np.ndarray]:
        """Each detector's weights over the detector, for display and checks."""
        cal = _calibration(self.calibration, calibration, det_shape)
        return {d.name: d.weights(det_shape, cal) for d in self.detectors}

    def prepare(self, shape: Shape4, dtype: np.dtype, calibration: Calibration | None) -> dict[str, Any]:
        cal = _calibration(self.calibration, calibration, shape[2:])
        columns = []
        for d in self.detectors:
            w = d.weights(shape[2:], cal)
            if not np.any(w):
                reach = float(radius_map(shape[2:], cal).max())
                raise StempressError(
                    f"virtual detector {d.name!r} covers no pixel of the {shape[2]}x{shape[3]} detector (its pixels "
                    f"reach {reach:.1f} px = {float(cal.to_angle(reach)):.1f} {cal.angle_units} from the centre); "
                    "move its radii inward")
            columns.append(w.reshape(-1))
        return {"weights": np.stack(columns, axis=1), "calibration": cal}

    def weights(self, state: State) -> np.ndarray:
        return state.context["weights"]

    def consume(self, state: State, block: Block, products: np.ndarray) -> None:
        rows = state.local(block)
        for j, d in enumerate(self.detectors):
            state.buffers[d.name][rows] = products[..., j]

    def params(self) -> dict[str, Any]:
        return {**super().params(), "detectors": [d.describe(self.calibration) for d in self.detectors],
                "calibration": None if self.calibration is None else self.calibration.to_dict()}


# -- centre of mass ----------------------------------------------------------------------------------------
#: The default CoM mask radius in BF radii: the pixels the default BF and ADF detectors see.
COM_MASK_BF = 3.0
#: ``CenterOfMass(mask_radius=AUTO)``: ``COM_MASK_BF`` BF radii when the calibration knows the BF radius.
AUTO = "auto"


class CenterOfMass(LinearReducer):
    """Per-position centre of mass of each frame relative to the beam centre, in detector pixels.

    Computed in the shared product from three columns: the masked frame sum and its first moments about the
    nearest whole pixel to the centre (integer weights keep the counts exact). A frame with no counts inside
    the mask gets a CoM of 0 (no deflection), not NaN, so DPC maps stay finite.

    Why a mask by default: a pixel at distance r holding h counts moves the CoM of a frame of N counts by
    h r / N, so one hot pixel near the detector edge shifts every CoM of the scan by the same vector, and dark
    noise adds variance growing with r**2 per pixel. The default (``mask_radius="auto"``) keeps the pixels
    within ``COM_MASK_BF`` BF radii of the calibrated centre (where the default BF and ADF detectors look: the
    shifted BF disk and the low-angle scattering that carry the deflection) and drops the high angles (few
    electrons; for the CoM mostly noise and hot pixels). LiberTEM's CoM takes a mask radius too; py4DSTEM uses
    the whole pattern of data it has hot-pixel corrected first. Without a BF radius in the calibration
    (run ``calibrate(source)``) "auto" falls back to the whole detector; ``mask_radius=None`` (or ``inf``)
    asks for the whole detector always; a number is a radius in ``units``. The radius used comes back as the
    output ``mask_radius_px`` (inf: unmasked).

    With ``rotation=True`` (default) the finished outputs also hold the scan/detector rotation and transpose
    that make the CoM field curl-free (``fit_dpc_rotation`` on the finished maps): pass them to ``dpc_field``
    or ``integrated_phase``; ``curl_fraction`` near 0 means a confident fit, near 0.5 a field of noise.
    """

    def __init__(self, *, mask_radius: float | str | None = AUTO, units: str = "px",
                 calibration: Calibration | None = None, name: str = "com", rotation: bool = True):
        if isinstance(mask_radius, str) and mask_radius != AUTO:
            raise StempressError(f"CoM mask_radius {mask_radius!r}: give a radius, None (whole detector) or 'auto'")
        if isinstance(mask_radius, int | float) and not mask_radius > 0:
            raise StempressError(f"CoM mask_radius must be positive, got {mask_radius}")
        self.mask_radius, self.units, self.calibration, self.name = mask_radius, units, calibration, name
        self.rotation = bool(rotation)

    def outputs(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        out = {**self.accumulators(shape, dtype),
               "mask_radius_px": OutputSpec("single", "float64", units="px", description="CoM mask radius (inf: none)")}
        if self.rotation:
            out["rotation_deg"] = OutputSpec("single", "float64", units="deg",
                                             description="scan/detector rotation for dpc_field (NaN: unknown)")
            out["transpose"] = OutputSpec("single", "bool", description="detector axes swapped, for dpc_field")
            out["curl_fraction"] = OutputSpec("single", "float64",
                                              description="curl left at the best rotation, of curl + div (0..1)")
        return out

    def accumulators(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        return {"com_y": OutputSpec("position", "float64", units="px", description="CoM shift along det_y"),
                "com_x": OutputSpec("position", "float64", units="px", description="CoM shift along det_x"),
                "intensity": OutputSpec("position", "float64", units="counts", description="counts in the mask")}

    def mask_radius_px(self, calibration: Calibration) -> float:
        """The mask radius in pixels for this calibration (inf: the whole detector)."""
        if self.mask_radius is None:
            return math.inf
        if self.mask_radius == AUTO:
            bf_px = calibration.bf_radius_px
            return math.inf if bf_px is None else COM_MASK_BF * bf_px
        return calibration.to_pixels(float(self.mask_radius), self.units)

    def prepare(self, shape: Shape4, dtype: np.dtype, calibration: Calibration | None) -> dict[str, Any]:
        cal = _calibration(self.calibration, calibration, shape[2:])
        det = shape[2:]
        radius = self.mask_radius_px(cal)
        if math.isinf(radius):
            mask = np.ones(det, np.float64)
        else:
            mask = (radius_map(det, cal) < radius).astype(np.float64)
            if not mask.any():
                raise StempressError(f"the CoM mask of radius {self.mask_radius} {self.units} covers no pixel; "
                                     "give a larger mask_radius")
        y0, x0 = round(cal.centre_y), round(cal.centre_x)
        yy, xx = np.indices(det, dtype=np.float64)
        weights = np.stack([mask.ravel(), (mask * (yy - y0)).ravel(), (mask * (xx - x0)).ravel()], axis=1)
        return {"weights": weights, "offset": (y0 - cal.centre_y, x0 - cal.centre_x), "calibration": cal,
                "mask_radius_px": radius}

    def weights(self, state: State) -> np.ndarray:
        return state.context["weights"]

    def consume(self, state: State, block: Block, products: np.ndarray) -> None:
        rows = state.local(block)
        total = products[..., 0]
        lit = total > 0
        safe = np.where(lit, total, 1.0)
        oy, ox = state.context["offset"]
        state.buffers["com_y"][rows] = np.where(lit, products[..., 1] / safe + oy, 0.0)
        state.buffers["com_x"][rows] = np.where(lit, products[..., 2] / safe + ox, 0.0)
        state.buffers["intensity"][rows] = total

    def finish(self, state: State) -> dict[str, np.ndarray]:
        out = {key: state.buffers[key] for key in ("com_y", "com_x", "intensity")}
        out["mask_radius_px"] = np.asarray(state.context["mask_radius_px"], np.float64)
        if self.rotation:
            fit = fit_dpc_rotation(out["com_y"], out["com_x"])
            out["rotation_deg"] = np.asarray(fit.rotation_deg, np.float64)
            out["transpose"] = np.asarray(fit.transpose, bool)
            out["curl_fraction"] = np.asarray(fit.curl_fraction, np.float64)
        return out

    def params(self) -> dict[str, Any]:
        return {**super().params(), "mask_radius": self.mask_radius, "units": self.units, "rotation": self.rotation,
                "calibration": None if self.calibration is None else self.calibration.to_dict()}


def default_reducers(calibration: Calibration) -> list[Reducer]:
    """The default task summaries: BF, ADF and HAADF images, the CoM map and the mean pattern."""
    return [VirtualDetectors(default_detectors(calibration), calibration=calibration),
            CenterOfMass(calibration=calibration), MeanPattern()]


# -- DPC from the CoM field --------------------------------------------------------------------------------
def dpc_field(com_y: np.ndarray, com_x: np.ndarray, *, rotation_deg: float = 0.0,
              transpose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The CoM shift as a vector field in scan coordinates, ``(g_y, g_x)``.

    Convention: ``transpose`` first swaps the detector axes (a scan/detector transpose, py4DSTEM's
    QR_flip); then the vector is rotated by ``rotation_deg`` in (x right, y down) image coordinates, positive
    turning +x towards +y: ``g_x = cos t d_x - sin t d_y``, ``g_y = sin t d_x + cos t d_y``. With the right
    rotation the field is the phase gradient (curl-free); ``fit_dpc_rotation`` finds it.
    """
    dy, dx = (np.asarray(com_x, np.float64), np.asarray(com_y, np.float64)) if transpose else \
        (np.asarray(com_y, np.float64), np.asarray(com_x, np.float64))
    t = math.radians(rotation_deg)
    return math.sin(t) * dx + math.cos(t) * dy, math.cos(t) * dx - math.sin(t) * dy


def divergence(g_y: np.ndarray, g_x: np.ndarray, step: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """d g_y / dy + d g_x / dx (central differences): the charge-density-like DPC signal."""
    return np.gradient(g_y, step[0], axis=0) + np.gradient(g_x, step[1], axis=1)


def curl(g_y: np.ndarray, g_x: np.ndarray, step: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """d g_x / dy - d g_y / dx (central differences): zero for a phase gradient, so a check of rotation."""
    return np.gradient(g_x, step[0], axis=0) - np.gradient(g_y, step[1], axis=1)


@dataclass(frozen=True)
class DpcRotation:
    """The rotation (degrees, ``dpc_field``'s convention) and transpose that make a CoM field curl-free.

    ``curl_fraction``: the curl variance left at that rotation over curl + divergence variance (which no
    rotation changes): ~0 for a clean phase gradient, ~0.5 for noise; NaN where the scan is too small (under
    2 x 2) or the field has no structure, and then ``rotation_deg`` is NaN too.
    """

    rotation_deg: float
    transpose: bool
    curl_fraction: float


def _centred(a: np.ndarray) -> np.ndarray:
    return (a - a.mean()).ravel()


def _best_rotation(d_y: np.ndarray, d_x: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The rotation (radians, modulo pi) minimising the curl variance of one (untransposed) field.

    Why no grid search: rotating the field by t gives curl = cos t c0 - sin t v0 and divergence = cos t v0 +
    sin t c0, with c0, v0 the curl and divergence unrotated (the finite differences are linear), so the curl
    variance is a quadratic form in (cos t, sin t): its smallest eigenvector is the exact minimum. Variances,
    not raw second moments, so a linear descan drift (constant curl and divergence) does not pull the angle.
    """
    c0, v0 = _centred(curl(d_y, d_x)), _centred(divergence(d_y, d_x))
    form = np.array([[c0 @ c0, -(c0 @ v0)], [-(c0 @ v0), v0 @ v0]])
    values, vectors = np.linalg.eigh(form)
    total = float(values.sum())
    if not total > 0:
        return math.nan, math.nan, c0, v0
    cos_t, sin_t = vectors[:, 0]
    return math.atan2(sin_t, cos_t), max(0.0, float(values[0])) / total, c0, v0


def fit_dpc_rotation(com_y: np.ndarray, com_x: np.ndarray) -> DpcRotation:
    """The rotation and transpose (a flip of the detector against the scan) making the CoM field curl-free.

    The standard criterion (py4DSTEM's ``solve_for_center_of_mass_relative_rotation``; the deflection of a
    non-magnetic sample is a potential gradient), solved exactly for both transposes; the transpose with the
    smaller curl fraction wins (no transpose on a tie: a phase varying along one direction only cannot tell).
    The curl cannot tell t from t + 180 degrees; the choice taken makes potential maxima sharper than minima
    (atoms and particles on a thinner support), i.e. the divergence, the phase's Laplacian, skews negative;
    for a sample of holes in a film turn the result by 180 degrees.
    """
    cy, cx = np.asarray(com_y, np.float64), np.asarray(com_x, np.float64)
    if cy.shape != cx.shape or cy.ndim != 2:
        raise StempressError(f"the CoM maps must be 2-D images of one shape, got {cy.shape} and {cx.shape}")
    if min(cy.shape) < 2 or not (np.isfinite(cy).all() and np.isfinite(cx).all()):
        return DpcRotation(math.nan, False, math.nan)
    best: tuple[float, float, bool, np.ndarray, np.ndarray] | None = None
    for transpose in (False, True):
        d_y, d_x = dpc_field(cy, cx, transpose=transpose)
        t, fraction, c0, v0 = _best_rotation(d_y, d_x)
        if math.isfinite(fraction) and (best is None or fraction < best[1]):
            best = (t, fraction, transpose, c0, v0)
    if best is None:
        return DpcRotation(math.nan, False, math.nan)
    t, fraction, transpose, c0, v0 = best
    div = math.cos(t) * v0 + math.sin(t) * c0
    if float(np.mean(div**3)) > 0:
        t += math.pi
    degrees = math.degrees(math.remainder(t, 2 * math.pi))
    return DpcRotation(180.0 if degrees == -180.0 else degrees, transpose, fraction)


def integrated_phase(g_y: np.ndarray, g_x: np.ndarray, *, step: tuple[float, float] = (1.0, 1.0),
                     highpass: float = 0.0, mirror: bool = True, rotation_deg: float = 0.0,
                     transpose: bool = False) -> np.ndarray:
    """iDPC: the potential ``phi`` whose gradient is the field, by Fourier integration, mean zero.

    Sign: ``g = +grad(phi)`` (the beam is deflected towards higher projected potential), so ``phi`` comes out in
    field units times scan-step units; for radians multiply by ``2 pi * (CoM angle per field unit, rad) /
    wavelength`` with the wavelength in scan-step units. ``phi_k = (k_y G_y + k_x G_x) / (2 pi i (|k|^2 +
    highpass^2))``: ``highpass`` (cycles per scan-step unit, e.g. 0.5 / field of view) damps the low
    frequencies where scan noise and drift accumulate. ``mirror`` integrates the even extension of the
    field (4x the area), so a non-periodic scan gives no edge artefacts. ``rotation_deg`` / ``transpose``
    turn the inputs with ``dpc_field`` first, so raw CoM maps and ``fit_dpc_rotation``'s answer go straight in.
    """
    gy, gx = np.asarray(g_y, np.float64), np.asarray(g_x, np.float64)
    if gy.shape != gx.shape or gy.ndim != 2:
        raise StempressError(f"the field components must be 2-D images of one shape, got {gy.shape} and {gx.shape}")
    if rotation_deg or transpose:
        gy, gx = dpc_field(gy, gx, rotation_deg=rotation_deg, transpose=transpose)
    ny, nx = gy.shape
    if mirror:  # phi extended evenly: its x-derivative flips sign in the x-mirror, its y-derivative in the y-mirror
        gy = np.block([[gy, gy[:, ::-1]], [-gy[::-1], -gy[::-1, ::-1]]])
        gx = np.block([[gx, -gx[:, ::-1]], [gx[::-1], -gx[::-1, ::-1]]])
    ky = np.fft.fftfreq(gy.shape[0], d=step[0])[:, None]
    kx = np.fft.fftfreq(gy.shape[1], d=step[1])[None, :]
    denominator = 2j * np.pi * (ky**2 + kx**2 + highpass**2)
    denominator[0, 0] = 1.0  # the constant is free; set to zero below
    spectrum = (ky * np.fft.fft2(gy) + kx * np.fft.fft2(gx)) / denominator
    spectrum[0, 0] = 0.0
    phi = np.fft.ifft2(spectrum).real[:ny, :nx]
    return phi - phi.mean()
