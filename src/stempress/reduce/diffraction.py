"""Diffraction reducers: the azimuthal (radial) profile per position and Bragg peaks per position.

A radial profile keeps what a polycrystal, amorphous or strain-free analysis infers (ring positions and
intensities) for ``bins`` numbers per position instead of a frame; Bragg peaks keep what a strain or orientation
map infers. The profile is linear in each frame, so it joins the engine's one fused matrix product; peak
finding is not linear and runs frame by frame.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from stempress.data.base import Block
from stempress.data.calibration import Calibration, chosen_calibration, radius_map
from stempress.errors import StempressError
from stempress.reduce.protocol import LinearReducer, OutputSpec, Reducer, Shape4, State


class RadialProfile(LinearReducer):
    """Azimuthal mean of each frame in ``bins`` equal rings from the calibrated centre out to ``max_radius`` px
    (default: the farthest detector pixel); rings with no pixel centre give 0.

    Why integer weights: the matrix holds 0/1 ring memberships and the division by each ring's pixel count
    happens after the product, so counts keep the engine's exact float32 path.
    """

    def __init__(self, bins: int = 64, max_radius: float | None = None, *, calibration: Calibration | None = None,
                 name: str = "radial"):
        if int(bins) < 1:
            raise StempressError(f"a radial profile needs at least one bin, got bins={bins}")
        if max_radius is not None and not (math.isfinite(max_radius) and max_radius > 0):
            raise StempressError(f"max_radius must be a positive number of pixels, got {max_radius}")
        self.bins, self.max_radius, self.calibration, self.name = int(bins), max_radius, calibration, name

    def outputs(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        return {"profile": OutputSpec("position", "float64", (self.bins,), units="counts/pixel",
                                      description="azimuthal mean per ring"),
                "radii": OutputSpec("single", "float64", (self.bins,), units="px", description="ring centres")}

    def accumulators(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        return {"profile": self.outputs(shape, dtype)["profile"]}

    def edges(self, det_shape: tuple[int, ...], calibration: Calibration | None = None) -> np.ndarray:
        """Ring edges in pixels, ``bins + 1`` of them."""
        cal = chosen_calibration(self.calibration, calibration, det_shape)
        top = self.max_radius if self.max_radius is not None else float(radius_map(det_shape, cal).max()) + 1e-9
        return np.linspace(0.0, top, self.bins + 1)

    def prepare(self, shape: Shape4, dtype: np.dtype, calibration: Calibration | None) -> dict[str, Any]:
        det = shape[2:]
        cal = chosen_calibration(self.calibration, calibration, det)
        edges = self.edges(det, cal)
        r = radius_map(det, cal).ravel()
        ring = np.searchsorted(edges, r, side="right") - 1  # edges[i] <= r < edges[i + 1]
        inside = (ring >= 0) & (ring < self.bins)
        weights = np.zeros((r.size, self.bins))
        weights[np.flatnonzero(inside), ring[inside]] = 1.0
        pixels = weights.sum(axis=0)
        return {"weights": weights, "scale": np.where(pixels > 0, 1.0 / np.maximum(pixels, 1), 0.0),
                "radii": (edges[:-1] + edges[1:]) / 2, "calibration": cal}

    def weights(self, state: State) -> np.ndarray:
        return state.context["weights"]

    def consume(self, state: State, block: Block, products: np.ndarray) -> None:
        state.buffers["profile"][state.local(block)] = products * state.context["scale"]

    def finish(self, state: State) -> dict[str, np.ndarray]:
        return {"profile": state.buffers["profile"], "radii": np.asarray(state.context["radii"], np.float64)}

    def params(self) -> dict[str, Any]:
        return {**super().params(), "bins": self.bins, "max_radius": self.max_radius,
                "calibration": None if self.calibration is None else self.calibration.to_dict()}


def find_peaks(frame: np.ndarray, *, threshold: float, sigma: float = 1.0, min_distance: int = 2,
               max_peaks: int = 32) -> np.ndarray:
    """Sub-pixel peaks of one frame, brightest first, as ``(n, 3)`` rows ``(y, x, intensity)``.

    Why this way: a small Gaussian filter stops Poisson noise from splitting a disk into many maxima; a maximum
    filter of ``2 * min_distance + 1`` keeps one maximum per neighbourhood; each maximum is refined by the
    centroid of the filtered 3x3 around it (intensity: the filtered value at the maximum), which stays inside
    the 3x3 and needs no fit that could diverge.
    """
    f = np.asarray(frame, np.float64)
    smooth = ndimage.gaussian_filter(f, sigma, mode="constant") if sigma > 0 else f
    local = ndimage.maximum_filter(smooth, size=2 * int(min_distance) + 1, mode="constant", cval=-np.inf)
    ys, xs = np.nonzero((smooth == local) & (smooth > threshold))
    if ys.size == 0:
        return np.zeros((0, 3))
    order = np.argsort(-smooth[ys, xs], kind="stable")[:max_peaks]
    ys, xs = ys[order], xs[order]
    padded = np.pad(smooth, 1)
    out = np.empty((ys.size, 3))
    offs = np.arange(-1, 2, dtype=np.float64)
    for i, (y, x) in enumerate(zip(ys, xs, strict=True)):
        patch = padded[y:y + 3, x:x + 3]
        w = np.clip(patch - patch.min(), 0.0, None)
        total = w.sum()
        dy = float((w.sum(axis=1) * offs).sum() / total) if total > 0 else 0.0
        dx = float((w.sum(axis=0) * offs).sum() / total) if total > 0 else 0.0
        out[i] = (y + dy, x + dx, smooth[y, x])
    return out


class BraggPeaks(Reducer):
    """Per position, up to ``max_peaks`` peaks ``(y, x, intensity)`` in detector pixels (index coordinates),
    brightest first, padded with NaN; ``count`` says how many are real. ``as_records`` turns the result into
    one flat structured array (the ragged list).

    ``threshold`` is in filtered counts; ``relative=True`` makes it a fraction of each frame's filtered maximum.
    """

    def __init__(self, threshold: float = 1.0, *, sigma: float = 1.0, min_distance: int = 2, max_peaks: int = 32,
                 relative: bool = False, name: str = "bragg"):
        if max_peaks < 1 or min_distance < 1:
            raise StempressError("BraggPeaks needs max_peaks >= 1 and min_distance >= 1")
        self.threshold, self.sigma, self.min_distance = float(threshold), float(sigma), int(min_distance)
        self.max_peaks, self.relative, self.name = int(max_peaks), bool(relative), name

    def outputs(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        return {"peaks": OutputSpec("position", "float64", (self.max_peaks, 3), units="px, px, counts",
                                    description="(y, x, intensity) per peak, NaN-padded"),
                "count": OutputSpec("position", "int32", description="peaks found")}

    def accumulators(self, shape: Shape4, dtype: np.dtype) -> dict[str, OutputSpec]:
        return self.outputs(shape, dtype)

    def start(self, shape: Shape4, dtype: np.dtype, calibration: Calibration | None = None,
              rows: tuple[int, int] | None = None) -> State:
        state = super().start(shape, dtype, calibration, rows)
        state.buffers["peaks"].fill(np.nan)
        return state

    def process(self, state: State, block: Block) -> None:
        rows = state.local(block)
        peaks, count = state.buffers["peaks"][rows], state.buffers["count"][rows]
        for iy in range(block.data.shape[0]):
            for ix in range(block.data.shape[1]):
                frame = block.data[iy, ix]
                threshold = self.threshold
                if self.relative:
                    top = float(frame.max())
                    threshold = self.threshold * (float(ndimage.gaussian_filter(
                        frame.astype(np.float64), self.sigma, mode="constant").max()) if top > 0 else 0.0)
                found = find_peaks(frame, threshold=threshold, sigma=self.sigma, min_distance=self.min_distance,
                                   max_peaks=self.max_peaks)
                peaks[iy, ix, :len(found)] = found
                count[iy, ix] = len(found)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "threshold": self.threshold, "sigma": self.sigma,
                "min_distance": self.min_distance, "max_peaks": self.max_peaks, "relative": self.relative}


PEAK_DTYPE = np.dtype([("scan_y", "i4"), ("scan_x", "i4"), ("y", "f8"), ("x", "f8"), ("intensity", "f8")])


def as_records(result: dict[str, np.ndarray]) -> np.ndarray:
    """A ``BraggPeaks`` result as one structured array, a row per peak, in scan order."""
    peaks, count = result["peaks"], result["count"]
    keep = np.arange(peaks.shape[2])[None, None, :] < count[..., None]
    sy, sx, _ = np.nonzero(keep)
    values = peaks[keep]
    out = np.empty(values.shape[0], PEAK_DTYPE)
    out["scan_y"], out["scan_x"] = sy, sx
    out["y"], out["x"], out["intensity"] = values[:, 0], values[:, 1], values[:, 2]
    return out
