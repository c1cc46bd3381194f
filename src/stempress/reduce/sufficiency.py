"""Is a representation sufficient for an inference? Targets, error measures and candidate representations.

Principles 1-3 of the study's part 2: name the inference (a ``Target``, parsed from ``"bf"``,
``"adf:inner=1.1,outer=3"``, ``"com"``, ``"mean_pattern"``, ``"radial:bins=32"``), name the tolerable error,
and check what a representation preserves by computing the inference from it and from the raw data on the same
scan positions. A representation answers a target either from frames (raw, lossless file, events, a binned
detector) or only from its own stored result (a task summary), which answers nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stempress.data.base import ArraySource, Dataset4D, SourceBase
from stempress.errors import StempressError
from stempress.reduce.calibration import Calibration
from stempress.reduce.diffraction import RadialProfile
from stempress.reduce.imaging import AUTO, Annulus, CenterOfMass, MeanPattern, VirtualDetectors, radius_map
from stempress.reduce.protocol import Reducer, Shape4

EXACTLY, WITHIN, NOT = "exactly", "within tolerance", "not"
_DETECTORS = {"bf": (0.0, 1.0, "bf"), "abf": (0.5, 1.0, "bf"), "adf": (1.1, 3.0, "bf"), "haadf": (3.0, math.inf, "bf"),
              "annulus": (0.0, math.inf, "px")}
KINDS = (*_DETECTORS, "com", "mean_pattern", "radial")


# -- targets -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One named inference. ``label`` is the text it was parsed from (normalised); ``params`` its settings.

    ``reducer(cal, scale)`` computes it from frames whose detector is binned ``scale`` x ``scale`` (with ``cal``
    the raw detector's calibration); ``extract`` gives the inference in raw-detector units.
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.params:
            return self.kind
        return self.kind + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))

    @property
    def assumes(self) -> tuple[str, ...]:
        """What computing this target from frames takes as given."""
        if self.kind == "mean_pattern":
            return ()
        if self.kind == "com" and "mask_radius" not in self.params:  # the default mask is 3 BF radii wide
            return ("calibrated centre", "BF radius")
        units = self.params.get("units", _DETECTORS.get(self.kind, (0, 0, "px"))[2])
        return ("calibrated centre", "BF radius") if units == "bf" else ("calibrated centre",)

    def reducer(self, cal: Calibration, scale: int = 1, name: str = "target") -> Reducer:
        det = (cal.det_shape[0] // scale, cal.det_shape[1] // scale) if cal.det_shape else None
        binned = binned_calibration(cal, scale, det)
        if self.kind in _DETECTORS:
            inner, outer, units = _DETECTORS[self.kind]
            units = self.params.get("units", units)
            ring = Annulus(self.kind.upper(), float(self.params.get("inner", inner)),
                           float(self.params.get("outer", outer)), units)
            lo, hi = ring.radii_px(cal)
            return VirtualDetectors([Annulus(ring.name, lo / scale, hi / scale, "px")], calibration=binned,
                                    name=name)
        if self.kind == "com":
            radius = self.params.get("mask_radius")
            units = self.params.get("units", "px")
            px = AUTO if radius is None else cal.to_pixels(float(radius), units) / scale
            return CenterOfMass(mask_radius=px, calibration=binned, name=name)
        if self.kind == "radial":
            top = self.params.get("max_radius")
            top_px = float(top) if top is not None else float(radius_map(cal.det_shape, cal).max()) + 1e-9
            return RadialProfile(int(self.params.get("bins", 32)), top_px / scale, calibration=binned, name=name)
        return MeanPattern(name=name)

    def keys(self) -> tuple[str, ...]:
        """The reducer outputs this inference keeps (what storing it as a summary costs)."""
        return {"com": ("com_y", "com_x"), "radial": ("profile",), "mean_pattern": ("mean",)}.get(
            self.kind, (self.kind.upper(),))

    def extract(self, result: dict[str, np.ndarray], scale: int = 1,
                det_shape: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """The inference in raw units: binned sums of means times ``scale**2``, shifts times ``scale``, and a
        binned mean pattern repeated back onto the raw detector (``det_shape``)."""
        if self.kind in _DETECTORS:
            return {k: result[k] * scale**2 for k in self.keys()}
        if self.kind == "com":
            return {k: result[k] * scale for k in self.keys()}
        if self.kind == "mean_pattern" and scale > 1:
            up = np.repeat(np.repeat(result["mean"], scale, axis=0), scale, axis=1)
            if det_shape is not None:
                pad = ((0, det_shape[0] - up.shape[0]), (0, det_shape[1] - up.shape[1]))
                up = np.pad(up, pad, mode="edge")
            return {"mean": up}
        return {k: result[k] for k in self.keys()}

    def summary_nbytes(self, shape: Shape4, cal: Calibration) -> int:
        """Bytes of this inference stored as its own reducer output."""
        reducer = self.reducer(cal)
        specs = reducer.outputs(shape, np.dtype("float64"))
        return sum(specs[k].nbytes(shape) for k in self.keys())


def parse_target(text: str | Target) -> Target:
    """``"adf:inner=1.1,outer=3,units=bf"`` -> ``Target``; numbers become floats (``bins`` an int)."""
    if isinstance(text, Target):
        return text
    kind, _, rest = str(text).strip().partition(":")
    kind = kind.strip().lower().replace("-", "_")
    if kind not in KINDS:
        raise StempressError(f"unknown inference target {kind!r}; use one of {', '.join(KINDS)} "
                             "(e.g. 'adf:inner=1.1,outer=3' or 'radial:bins=32')")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise StempressError(f"target {text!r}: parameter {item!r} needs key=value")
        key, value = key.strip(), value.strip()
        if key == "units":
            params[key] = value
        else:
            try:
                params[key] = int(value) if key == "bins" else float(value)
            except ValueError as exc:
                raise StempressError(f"target {text!r}: {key}={value!r} is not a number") from exc
    allowed = {"com": {"mask_radius", "units"}, "radial": {"bins", "max_radius"}, "mean_pattern": set()}.get(
        kind, {"inner", "outer", "units"})
    unknown = set(params) - allowed
    if unknown:
        raise StempressError(f"target {text!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                             f"{kind} takes {', '.join(sorted(allowed)) or 'none'}")
    return Target(kind, params)


def parse_targets(targets: str | Sequence[str | Target]) -> list[Target]:
    """A list of targets; a single string may hold several separated by ``;``."""
    items = [t for t in targets.split(";") if t.strip()] if isinstance(targets, str) else list(targets)
    parsed = [parse_target(t) for t in items]
    if not parsed:
        raise StempressError("name at least one inference target (e.g. 'bf', 'com')")
    labels = [t.label for t in parsed]
    if len(set(labels)) != len(labels):
        raise StempressError(f"inference targets repeat: {labels}")
    return parsed


# -- errors ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One target computed from one representation against the raw data."""

    target: str
    recovers: str
    rel_rms: float
    max_abs: float


def errors(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> tuple[float, float]:
    """Relative RMS error over all arrays of an inference (absolute RMS where the reference is all zero) and
    the largest absolute difference."""
    a = np.concatenate([np.asarray(candidate[k], np.float64).ravel() for k in sorted(reference)])
    b = np.concatenate([np.asarray(reference[k], np.float64).ravel() for k in sorted(reference)])
    if a.shape != b.shape:
        return math.inf, math.inf
    diff = a - b
    rms = float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0
    norm = float(np.sqrt(np.mean(b**2))) if b.size else 0.0
    return (rms / norm if norm > 0 else rms), (float(np.abs(diff).max()) if diff.size else 0.0)


def judge(target: str, candidate: dict[str, np.ndarray] | None, reference: dict[str, np.ndarray],
          tolerance: float) -> Check:
    """exactly (bit-equal), within tolerance (relative RMS <= tolerance), or not (or not computable: NaN)."""
    if candidate is None:
        return Check(target, NOT, math.nan, math.nan)
    rel, top = errors(candidate, reference)
    status = EXACTLY if top == 0 else WITHIN if rel <= tolerance else NOT
    return Check(target, status, rel, top)


# -- sampling ----------------------------------------------------------------------------------------------
def sample_positions(shape: Shape4, max_positions: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted flat scan positions to check on (None: the whole cube), drawn without replacement, seeded."""
    n = shape[0] * shape[1]
    if max_positions is None or max_positions >= n:
        return None
    if max_positions < 1:
        raise StempressError(f"max_positions must be >= 1, got {max_positions}")
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_positions), replace=False))


def gather(source: Dataset4D, positions: np.ndarray | None) -> Dataset4D:
    """The frames at ``positions`` as a one-row cube (reading only the rows that hold them), or the source."""
    if positions is None:
        return source
    sx = source.shape[1]
    rows, cols = np.divmod(positions, sx)
    frames = []
    for r in np.unique(rows):
        data = source.read_rows(int(r), int(r) + 1)[0]
        frames.append(data[cols[rows == r]])
    return ArraySource(np.concatenate(frames)[None], name=f"{source.name}[sample]")


# -- binned detector ---------------------------------------------------------------------------------------
def binned_calibration(cal: Calibration, scale: int, det_shape: tuple[int, int] | None = None) -> Calibration:
    """The same geometry on a detector mean-binned ``scale`` x ``scale`` (pixel b*j..b*j+b-1 -> j)."""
    if scale == 1:
        return cal
    return replace(cal, centre_y=(cal.centre_y + 0.5) / scale - 0.5, centre_x=(cal.centre_x + 0.5) / scale - 0.5,
                   bf_radius_px=None if cal.bf_radius_px is None else cal.bf_radius_px / scale,
                   q_pixel_size=cal.q_pixel_size * scale, det_shape=det_shape)


def bin_frames(data: np.ndarray, scale: int) -> np.ndarray:
    """Mean over ``scale`` x ``scale`` detector blocks, float32 (edge pixels that do not fill a block dropped)."""
    n, m, dy, dx = data.shape
    by, bx = dy // scale, dx // scale
    if by == 0 or bx == 0:
        raise StempressError(f"cannot bin a {dy}x{dx} detector {scale}x{scale}")
    cut = data[:, :, :by * scale, :bx * scale].reshape(n, m, by, scale, bx, scale)
    return cut.mean(axis=(3, 5), dtype=np.float64).astype(np.float32)


@dataclass
class BinnedSource(SourceBase):
    """A source seen through a mean-binned detector, binned as rows are read."""

    inner: Dataset4D
    scale: int
    name: str = "binned"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sy, sx, dy, dx = self.inner.shape
        self.shape = (sy, sx, dy // self.scale, dx // self.scale)
        self.dtype = np.dtype(np.float32)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return bin_frames(self.inner.read_rows(start, stop), self.scale)


# -- computing targets -------------------------------------------------------------------------------------
