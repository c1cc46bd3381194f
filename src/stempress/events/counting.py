"""Electron counting: integrating-detector frames (ADU) -> counted electrons (uint16), block by block.

Counting is LOSSY with respect to the ADC values: dark subtraction, gain division, the threshold and the
rounding throw away read noise and sub-electron signal, and ``centroid`` mode also moves electrons to
their cluster's centroid pixel. The ADU cube cannot be rebuilt from the counts; what is gained is a cube
that is ~99 % zeros (events, entropy coding) with the detector's noise removed. What was done is written
to ``metadata["counting"]`` so a reader knows the counts are derived data.

Two modes:

* ``threshold``: per pixel, ``round((adu - dark) / gain)`` where ``adu - dark`` exceeds the threshold,
  else 0. Right for detectors whose electrons land in one pixel (no charge sharing).
* ``centroid``: per frame, pixels above threshold are grouped into connected clusters
  (``scipy.ndimage.label``) and each cluster becomes one electron (``cluster_count="one"``) or
  ``round(cluster sum)`` electrons (``"sum"``) at its intensity-weighted centroid pixel. Right for
  sparse frames with charge sharing; it undercounts (``"one"``) or blurs (``"sum"``) where electrons
  land in neighbouring pixels of the same frame.

Truth for synthetic data: ``SyntheticSource.expected_rows`` is the Poisson *expectation*, not the counts.
An integrating-mode synthetic source draws its Poisson counts from the same per-row RNG stream as the
counting-mode source of the same spec (read noise is drawn after the counts), so ``true_counts(source)``
(the counting-mode twin) gives the exact electrons per pixel behind the ADU values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from stempress.data.base import Dataset4D, SourceBase, iter_blocks
from stempress.errors import StempressError, require_choice

MODES = ("threshold", "centroid")
THRESHOLD_UNITS = ("adu", "sigma")
CLUSTER_COUNTS = ("one", "sum")
OUT_DTYPE = np.dtype(np.uint16)
_OUT_MAX = int(np.iinfo(OUT_DTYPE).max)

Reference = float | np.ndarray


@dataclass(frozen=True)
class CountingParams:
    """How ADU become electrons.

    ``dark`` (ADU) and ``gain`` (ADU per electron) are scalars or per-pixel ``(det_y, det_x)`` arrays.
    ``threshold`` is in ADU above dark (``threshold_unit="adu"``) or in multiples of the read-noise
    sigma ``read_noise`` (ADU, scalar or per-pixel; ``threshold_unit="sigma"``). ``connectivity`` 1 joins
    edge neighbours only, 2 also diagonal ones (centroid mode).
    """

    dark: Reference = 0.0
    gain: Reference = 1.0
    threshold: float = 0.5
    threshold_unit: str = "adu"
    read_noise: Reference | None = None
    mode: str = "threshold"
    connectivity: int = 1
    cluster_count: str = "one"

    def __post_init__(self) -> None:
        require_choice(self.mode, MODES, "counting mode")
        require_choice(self.threshold_unit, THRESHOLD_UNITS, "threshold unit")
        require_choice(self.cluster_count, CLUSTER_COUNTS, "cluster_count")
        if self.connectivity not in (1, 2):
            raise StempressError(f"connectivity {self.connectivity} must be 1 (edges) or 2 (edges and corners)")
        if not (np.isfinite(self.threshold) and self.threshold >= 0):
            raise StempressError(f"threshold {self.threshold} must be a finite number >= 0")
        if self.threshold_unit == "sigma" and self.read_noise is None:
            raise StempressError("threshold in sigma units needs read_noise (ADU); give it or use threshold_unit=adu")

    def resolved(self, det: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dark, gain and threshold (ADU) as float arrays broadcastable to one frame, checked against it."""
        dark = _reference(self.dark, det, "dark")
        gain = _reference(self.gain, det, "gain")
        if np.any(gain <= 0):
            raise StempressError("gain reference has values <= 0; every pixel needs a positive ADU per electron")
        if self.threshold_unit == "sigma":
            sigma = _reference(self.read_noise, det, "read_noise")
            if np.any(sigma < 0):
                raise StempressError("read_noise reference has negative values; sigma must be >= 0")
            threshold = self.threshold * sigma
        else:
            threshold = np.asarray(float(self.threshold))
        return dark, gain, threshold

    def describe(self) -> dict[str, Any]:
        """JSON-friendly record of the parameters (arrays summarised, not copied)."""
        return {
            "mode": self.mode,
            "dark": _summary(self.dark),
            "gain": _summary(self.gain),
            "threshold": float(self.threshold),
            "threshold_unit": self.threshold_unit,
            "read_noise": None if self.read_noise is None else _summary(self.read_noise),
            "connectivity": self.connectivity,
            "cluster_count": self.cluster_count if self.mode == "centroid" else None,
            "output_dtype": str(OUT_DTYPE),
            "lossy": "ADC values are not kept",
        }


def _reference(value: Any, det: tuple[int, int], what: str) -> np.ndarray:
    """A scalar or a (det_y, det_x) array of finite floats; anything else is the user's mistake."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 0 and arr.shape != tuple(det):
        raise StempressError(f"{what} reference has shape {arr.shape}, expected a scalar or {tuple(det)} "
                             "(det_y, det_x); give one value per detector pixel")
    if not np.all(np.isfinite(arr)):
        raise StempressError(f"{what} reference has NaN or infinite values; fix or mask those pixels first")
    return arr


def _summary(value: Any) -> float | dict[str, Any]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return float(arr)
    return {"per_pixel": list(arr.shape), "mean": float(arr.mean()), "min": float(arr.min()),
            "max": float(arr.max())}


def _check_input(block: np.ndarray, where: str) -> None:
    """ADU are finite and non-negative; anything else means the input is not raw detector frames."""
    if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
        raise StempressError(f"{where}: NaN or infinite values in the frames; counting needs raw ADU values")
    if block.dtype.kind in "if" and block.size and block.min() < 0:
        raise StempressError(f"{where}: negative values in the frames; counting needs raw (non-negative) "
                             "ADU values, subtract dark through CountingParams(dark=...) instead")


def count_frames(frames: np.ndarray, params: CountingParams) -> np.ndarray:
    """Count electrons in ``(..., det_y, det_x)`` ADU frames; returns uint16 of the same shape."""
    frames = np.asarray(frames)
    det = frames.shape[-2:]
    _check_input(frames, "count_frames")
    dark, gain, threshold = params.resolved(det)
    adu = frames.astype(np.float64) - dark
    hit = adu > threshold
    electrons = np.where(hit, adu / gain, 0.0)
    if params.mode == "threshold":
        counts = np.rint(electrons)
    else:
        counts = _centroid(electrons.reshape(-1, *det), hit.reshape(-1, *det), params).reshape(frames.shape)
    return np.clip(counts, 0, _OUT_MAX).astype(OUT_DTYPE)


def _centroid(electrons: np.ndarray, hit: np.ndarray, params: CountingParams) -> np.ndarray:
    """Clusters within each frame (no links across frames) -> electrons at intensity-weighted centroids."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, params.connectivity)
    labels, n = ndimage.label(hit, structure=structure)
    out = np.zeros(electrons.shape, np.float64)
    if n == 0:
        return out
    index = np.arange(1, n + 1)
    sums = ndimage.sum_labels(electrons, labels, index)
    # weights are > 0 inside clusters (above a threshold >= 0), so every centroid is defined
    centres = np.asarray(ndimage.center_of_mass(electrons, labels, index)).reshape(n, 3)
    f, y, x = (np.clip(np.rint(centres[:, k]), 0, electrons.shape[k] - 1).astype(np.intp) for k in range(3))
    values = np.ones(n) if params.cluster_count == "one" else np.rint(sums)
    np.add.at(out, (f, y, x), values)
    return out


class CountedSource(SourceBase):
    """An integrating source seen as counted electrons (uint16), computed block by block on read."""

    def __init__(self, source: Dataset4D, params: CountingParams):
        self.source = source
        self.params = params
        self.shape = tuple(source.shape)  # type: ignore[assignment]
        self.dtype = OUT_DTYPE
        self.name = f"{source.name}-counted"
        # resolve now so wrong reference shapes fail before any data is read
        params.resolved(self.shape[2:])
        self.metadata: dict[str, Any] = dict(source.metadata)
        self.metadata["counting"] = {**params.describe(), "source": source.name,
                                     "source_dtype": str(np.dtype(source.dtype))}

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = self.check_rows(start, stop)
        block = np.asarray(self.source.read_rows(start, stop))
        _check_input(block, f"{self.source.name} rows [{start}, {stop})")
        return count_frames(block, self.params)

    def close(self) -> None:
        self.source.close()


def true_counts(source: Any) -> Any:
    """The counting-mode twin of an integrating synthetic source: the Poisson electrons behind its ADU.

    Both modes draw counts from the same ``(seed, row)`` stream before any detector effect, so the twin
    holds exactly the electrons the integrating frames were made from (hot-pixel counts included).
    """
    from stempress.data.synthetic import SyntheticSource

    if not isinstance(source, SyntheticSource):
        raise StempressError(f"{source.name}: true counts are only known for synthetic sources")
    spec = source.spec.replace(mode="counting", gain=1.0, read_noise=0.0, offset=0.0, dtype="uint32",
                               max_count=None)
    return SyntheticSource(spec)


def _blocks(cube: np.ndarray | Dataset4D) -> tuple[tuple[int, ...], Any]:
    if isinstance(cube, np.ndarray):
        return cube.shape, iter([cube])
    return tuple(cube.shape), (b.data for b in iter_blocks(cube))


def counting_accuracy(counted: np.ndarray | Dataset4D, truth: np.ndarray | Dataset4D) -> dict[str, float]:
    """How close counts are to the true electrons (arrays or sources of the same shape, read in blocks).

    Keys: ``total_counted``, ``total_true``, ``total_error_percent`` (signed), ``pixel_rms`` (electrons),
    ``exact_fraction`` (all pixels), ``exact_fraction_hit`` (pixels with true electrons: zeros dominate
    ``exact_fraction`` in sparse cubes).
    """
    shape_c, blocks_c = _blocks(counted)
    shape_t, blocks_t = _blocks(truth)
    if shape_c != shape_t:
        raise StempressError(f"counted shape {shape_c} differs from truth shape {shape_t}; compare the same cube")
    total_c = total_t = sq = exact = hit = exact_hit = n = 0.0
    for c, t in zip(_rows(blocks_c), _rows(blocks_t), strict=True):
        c = c.astype(np.float64)
        t = t.astype(np.float64)
        total_c += c.sum()
        total_t += t.sum()
        sq += np.square(c - t).sum()
        same = c == t
        exact += same.sum()
        nz = t > 0
        hit += nz.sum()
        exact_hit += (same & nz).sum()
        n += c.size
    err = 100.0 * (total_c - total_t) / total_t if total_t else (0.0 if total_c == 0 else float("inf"))
    return {
        "total_counted": float(total_c),
        "total_true": float(total_t),
        "total_error_percent": float(err),
        "pixel_rms": float(np.sqrt(sq / n)),
        "exact_fraction": float(exact / n),
        "exact_fraction_hit": float(exact_hit / hit) if hit else 1.0,
    }


def _rows(blocks: Any) -> Any:
    """Single scan rows from blocks of any height, so two sources with different block sizes line up."""
    for block in blocks:
        yield from block
