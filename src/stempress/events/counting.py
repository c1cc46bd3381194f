"""Electron counting: integrating-detector frames (ADU) -> counted electrons (uint16), block by block.

Counting is LOSSY with respect to the ADC values, and the loss cannot be undone:

* ADC amplitudes: each hit becomes a whole number of electrons; the ADU it had (and so the read noise,
  the gain variation within a pixel, the energy an electron deposited) are gone;
* sub-threshold signal: anything not above the threshold (a weak electron, the low-charge tail of a
  charge-shared one) becomes 0;
* coincidence losses: electrons that overlap in one frame (the same pixel, or neighbouring pixels in
  ``cluster`` mode) are merged, so bright regions are undercounted.

What is gained is a cube that is ~99 % zeros (events, entropy coding) with the detector's noise removed.
What was done is written to ``metadata["counting"]``, and ``count_to_file`` (the ``stempress count``
command) writes it into the event file beside the source's calibration and provenance (``events.record``:
stempy and entropy-coded files: groups ``metadata/stempress/counting`` etc.; raw_csr: tables
``[stempress.counting]`` etc. of the TOML), so a reader knows the counts are derived data and where they came from.
``count_to_file`` also says what looks wrong (``CountReport.warnings``): no electrons at all, a guessed scan
shape, a hot pixel, a stempy file much larger than raw_csr would be.

Two methods:

* ``pixel``: per pixel, ``round((adu - dark) / gain)`` where ``adu - dark`` exceeds the threshold, else 0.
  Right for detectors whose electrons land in one pixel (no charge sharing). Because hits are rounded, a
  threshold below half an electron acts as half an electron, and a charge-shared electron whose pieces
  are all below half an electron is lost.
* ``cluster``: per frame, pixels above threshold are grouped into connected clusters
  (``scipy.ndimage.label``) and each cluster becomes one electron (``cluster_count="one"``) or
  ``round(cluster sum)`` electrons (``"sum"``) at its intensity-weighted centroid pixel. Right for
  sparse frames with charge sharing; it undercounts (``"one"``) or blurs (``"sum"``) where electrons
  land in neighbouring pixels of the same frame.

Truth for synthetic data: ``SyntheticSource.expected_rows`` is the Poisson *expectation*, not the counts.
An integrating-mode synthetic source draws its Poisson counts from the same per-row RNG stream as the
counting-mode source of the same spec (read noise is drawn after the counts), so ``true_counts(source)``
(the counting-mode twin) gives the exact electrons per pixel behind the ADU values.
``benchmarks/counting_accuracy.py`` reports the accuracy against it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import ndimage

from stempress.data.base import Dataset4D, SourceBase, iter_blocks
from stempress.data.events import EventBlock
from stempress.data.hdf5 import one_line, open_hdf5
from stempress.data.record import read_h5_record, read_toml_record
from stempress.errors import StempressError, require_choice
from stempress.events.libertem import require_toml_name

METHODS = ("pixel", "cluster")
THRESHOLD_UNITS = ("adu", "sigma")
CLUSTER_COUNTS = ("one", "sum")
OUT_DTYPE = np.dtype(np.uint16)
_OUT_MAX = int(np.iinfo(OUT_DTYPE).max)
#: What every record of counted data says about what was lost.
LOSSY_NOTE = ("lossy with respect to ADC values: ADC amplitudes, sub-threshold signal and coincident "
              "(overlapping) electrons are not recoverable from the counts")
#: Event files ``count_to_file`` writes: stempy's HDF5, LiberTEM's raw_csr (a .toml and three .bin) and the
#: entropy-coded HDF5 file (``events.entropy_file``, the smallest; lossless for the counts).
EVENT_FORMATS = ("stempy", "raw_csr", "entropy")
#: A pixel with at least this many electrons and this many times the brightest of its 8 neighbours is called hot.
HOT_MIN_ELECTRONS = 20
HOT_FACTOR = 10.0
#: Pixels counted at once: count_frames' float64 temporaries stay a few x 32 MiB whatever the block size.
_CHUNK_PIXELS = 1 << 22
_REFERENCE_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd", ".nxs")

Reference = float | np.ndarray


@dataclass(frozen=True)
class CountingParams:
    """How ADU become electrons.

    ``dark`` (ADU) and ``gain`` (ADU per electron) are scalars or per-pixel ``(det_y, det_x)`` arrays.
    ``threshold`` is in ADU above dark (``threshold_unit="adu"``) or in multiples of the read-noise
    sigma ``read_noise`` (ADU, scalar or per-pixel; ``threshold_unit="sigma"``). ``connectivity`` 1 joins
    edge neighbours only, 2 also diagonal ones (cluster method).
    """

    dark: Reference = 0.0
    gain: Reference = 1.0
    threshold: float = 0.5
    threshold_unit: str = "adu"
    read_noise: Reference | None = None
    method: str = "pixel"
    connectivity: int = 1
    cluster_count: str = "one"

    def __post_init__(self) -> None:
        require_choice(self.method, METHODS, "counting method")
        require_choice(self.threshold_unit, THRESHOLD_UNITS, "threshold unit")
        require_choice(self.cluster_count, CLUSTER_COUNTS, "cluster_count")
        if self.connectivity not in (1, 2):
            raise StempressError(f"connectivity {self.connectivity} must be 1 (edges) or 2 (edges and corners)")
        if not (np.isfinite(self.threshold) and self.threshold >= 0):
            raise StempressError(f"threshold {self.threshold} must be a finite number >= 0")
        if self.threshold_unit == "sigma" and self.read_noise is None:
            raise StempressError("a threshold in read-noise sigmas needs the read noise: give --read-noise (ADU; "
                                 "read_noise= in Python), or give the threshold in ADU (--threshold-unit adu)")

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
            "method": self.method,
            "dark": _summary(self.dark),
            "gain": _summary(self.gain),
            "threshold": float(self.threshold),
            "threshold_unit": self.threshold_unit,
            "read_noise": None if self.read_noise is None else _summary(self.read_noise),
            "connectivity": self.connectivity if self.method == "cluster" else None,
            "cluster_count": self.cluster_count if self.method == "cluster" else None,
            "output_dtype": str(OUT_DTYPE),
            "lossy": LOSSY_NOTE,
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


def load_reference(text: str, what: str) -> Reference:
    """A reference as the user wrote it: a number, a ``.npy`` file, or ``file.h5:/dataset``.

    Only reading happens here; the shape and values are checked against the detector by ``CountingParams``.
    """
    try:
        return float(text)
    except ValueError:
        pass
    path, dataset = Path(text), None
    head, sep, tail = text.rpartition(":")
    if sep and Path(head).suffix.lower() in _REFERENCE_SUFFIXES:
        path, dataset = Path(head), tail
    if not path.is_file():
        raise StempressError(f"{what} reference {text!r}: no such file; give a number, a .npy file or "
                             "file.h5:/dataset holding one value per detector pixel")
    array = _read_reference(path, dataset, text, what)
    if array.dtype.kind not in "uif":
        raise StempressError(f"{what} reference {text}: dtype {array.dtype} is not numeric; save it as float32")
    return array


def _read_reference(path: Path, dataset: str | None, text: str, what: str) -> np.ndarray:
    if path.suffix.lower() in _REFERENCE_SUFFIXES:
        if dataset is None:
            raise StempressError(f"{what} reference {text}: name the dataset, e.g. {text}:/dark")
        with open_hdf5(path) as f:
            if not isinstance(f.get(dataset), h5py.Dataset):
                raise StempressError(f"{what} reference {text}: no dataset {dataset!r} in {path.name}")
            return np.asarray(f[dataset][()])
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StempressError(f"{what} reference {text}: not a readable .npy file ({one_line(exc)}); "
                             "save it with numpy.save") from None


def check_frames(block: np.ndarray, where: str) -> None:
    """ADU are finite and non-negative; anything else means the input is not raw detector frames."""
    if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
        raise StempressError(f"{where}: NaN or infinite values in the frames; counting needs raw ADU values")
    if block.dtype.kind in "if" and block.size and block.min() < 0:
        raise StempressError(f"{where}: negative values in the frames; counting needs raw (non-negative) "
                             "ADU values: give the dark reference with --dark (dark= in Python) instead of "
                             "subtracting it first")


def counting_options(threshold: float | None, *, threshold_unit: str = "adu", read_noise: str | None = None,
                     dark: str = "0", gain: str = "1", method: str = "pixel", connectivity: int = 1,
                     cluster_count: str = "one") -> tuple[CountingParams | None, dict[str, str]]:
    """``CountingParams`` from the words a user typed (references as numbers, ``.npy`` or ``file.h5:/dataset``),
    and the references as typed, for the record's ``inputs``. No ``threshold`` means no counting (the frames are
    counts already): (None, {}), and any other counting option given with it is refused."""
    references = {"dark": dark, "gain": gain, **({"read_noise": read_noise} if read_noise is not None else {})}
    if threshold is None:
        given = [f"--{k.replace('_', '-')}" for k, v, default in (
            ("dark", dark, "0"), ("gain", gain, "1"), ("read_noise", read_noise, None),
            ("threshold_unit", threshold_unit, "adu"), ("method", method, "pixel"),
            ("connectivity", connectivity, 1), ("cluster_count", cluster_count, "one")) if v != default]
        if given:
            raise StempressError(f"{', '.join(given)} count electrons, which needs --threshold (threshold= in "
                                 "Python); give it, or leave the counting options out to write counts as they are")
        return None, {}
    params = CountingParams(**{k: load_reference(v, k) for k, v in references.items()}, threshold=threshold,
                            threshold_unit=threshold_unit, method=method, connectivity=connectivity,
                            cluster_count=cluster_count)
    return params, references


def count_frames(frames: np.ndarray, params: CountingParams) -> np.ndarray:
    """Count electrons in ``(..., det_y, det_x)`` ADU frames; returns uint16 of the same shape.

    Frames are counted a chunk at a time, so the float temporaries do not grow with the block (one scan row
    of a large detector is already gigabytes in float64).
    """
    frames = np.asarray(frames)
    det = frames.shape[-2:]
    check_frames(frames, "count_frames")
    dark, gain, threshold = params.resolved(det)
    flat = frames.reshape(-1, *det)
    out = np.empty(flat.shape, OUT_DTYPE)
    step = max(1, _CHUNK_PIXELS // max(1, det[0] * det[1]))
    for i in range(0, flat.shape[0], step):
        out[i:i + step] = _count(flat[i:i + step], dark, gain, threshold, params)
    return out.reshape(frames.shape)


def _count(frames: np.ndarray, dark: np.ndarray, gain: np.ndarray, threshold: np.ndarray,
           params: CountingParams) -> np.ndarray:
    """``(frames, det_y, det_x)`` ADU -> electrons, uint16."""
    adu = frames.astype(np.float64) - dark
    hit = adu > threshold
    electrons = np.where(hit, adu / gain, 0.0)
    counts = np.rint(electrons) if params.method == "pixel" else _clusters(electrons, hit, params)
    return np.clip(counts, 0, _OUT_MAX).astype(OUT_DTYPE)


def _clusters(electrons: np.ndarray, hit: np.ndarray, params: CountingParams) -> np.ndarray:
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


def counting_description(params: CountingParams, source_name: str, source_dtype: Any) -> dict[str, Any]:
    """What counted data say about their counting (``metadata["counting"]``): the parameters and the input."""
    return {**params.describe(), "source": source_name, "source_dtype": str(np.dtype(source_dtype))}


class CountedSource(SourceBase):
    """An integrating source seen as counted electrons (uint16), computed block by block on read.

    ``max_input`` is the largest frame value read so far: what a user needs to see when nothing was counted.
    """

    def __init__(self, source: Dataset4D, params: CountingParams):
        self.source = source
        self.params = params
        self.shape = tuple(source.shape)  # type: ignore[assignment]
        self.dtype = OUT_DTYPE
        self.name = f"{source.name}-counted"
        # resolve now so wrong reference shapes fail before any data is read
        params.resolved(self.shape[2:])
        self.metadata: dict[str, Any] = dict(source.metadata)
        self.metadata["counting"] = counting_description(params, source.name, source.dtype)
        self.max_input: float | None = None

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        start, stop = self.check_rows(start, stop)
        block = np.asarray(self.source.read_rows(start, stop))
        check_frames(block, f"{self.source.name} rows [{start}, {stop})")
        if block.size:
            top = float(block.max())
            self.max_input = top if self.max_input is None else max(self.max_input, top)
        return count_frames(block, self.params)

    def close(self) -> None:
        self.source.close()


# -- counting to an event file -------------------------------------------------------------------------------
@dataclass
class CountReport:
    """What ``count_to_file`` (an ``EventSink``) wrote: the file(s), how many electrons, the record stored with them,
    and what looks wrong (``warnings``, one line each: the file is written, but the user should look)."""

    path: Path
    format: str
    files: list[Path]
    shape: tuple[int, int, int, int]
    n_events: int
    n_electrons: int
    record: dict[str, Any] = field(repr=False)
    warnings: list[str] = field(default_factory=list)
    counted: bool = True  # False: the frames were counts already, written as they are (nothing lost)

    def summary(self) -> str:
        positions = self.shape[0] * self.shape[1]
        line = (f"wrote {self.path} ({self.format}): {self.n_electrons:,} electrons in {self.n_events:,} events, "
                f"{self.n_electrons / positions:.3g} per scan position")
        return line + (f"; counting is {LOSSY_NOTE}" if self.counted else " (counts as read, lossless)")


class CountTally:
    """Electrons, events, the largest count and each pixel's electrons over the scan, added up block by block:
    what the record, the report and the warnings need, known once the counts have all passed."""

    def __init__(self, det: tuple[int, int]) -> None:
        self.n_events = self.n_electrons = self.max_count = 0
        self.pattern = np.zeros(tuple(det), np.uint64)  # electrons per detector pixel, over the scan

    def add(self, counts: np.ndarray) -> None:
        """One dense block of counts ``(rows, scan_x, det_y, det_x)``."""
        self.n_events += int(np.count_nonzero(counts))
        self.n_electrons += int(counts.sum(dtype=np.uint64))
        self.max_count = max(self.max_count, int(counts.max(initial=0)))
        self.pattern += counts.sum(axis=(0, 1), dtype=np.uint64)

    def add_events(self, events: EventBlock) -> None:
        """The same as ``add`` of the block ``events`` came from, from its events: a live block's counts are added
        up once per electron instead of once per pixel (96x96 frames: ~3 against ~11 us per frame)."""
        self.n_events += events.n_events
        self.n_electrons += events.n_electrons
        self.max_count = max(self.max_count, events.max_count)
        if events.n_events:  # float64 sums of integers are exact far beyond any pixel's electrons in one block
            self.pattern += np.bincount(events.indices, weights=events.counts,
                                        minlength=self.pattern.size).astype(np.uint64).reshape(self.pattern.shape)

    def merge(self, other: CountTally) -> None:
        """Add another range of scan rows' tally (integer sums: the same totals in any order)."""
        self.n_events += other.n_events
        self.n_electrons += other.n_electrons
        self.max_count = max(self.max_count, other.max_count)
        self.pattern += other.pattern


def event_format(out: str | Path, fmt: str | None = None) -> str:
    """The format asked for, else the one ``out``'s suffix names (.toml: raw_csr, else stempy); the suffix must
    fit it (raw_csr is named by its .toml, the HDF5 formats are not)."""
    suffix = Path(out).suffix.lower()
    fmt = fmt if fmt is not None else ("raw_csr" if suffix == ".toml" else "stempy")
    require_choice(fmt, EVENT_FORMATS, "event format")
    if fmt == "raw_csr":
        require_toml_name(out)
    if fmt != "raw_csr" and suffix == ".toml":
        raise StempressError(f"{out}: the {fmt} format is an HDF5 file, not .toml; give a name like scan.h5 or "
                             "use --format raw_csr")
    return fmt


def counting_record(description: Mapping[str, Any], shape: tuple[int, ...], tally: CountTally,
                    inputs: Mapping[str, str] | None) -> dict[str, Any]:
    """The record of a count, stored in the event file: the parameters, the input and what was counted."""
    from stempress import __version__

    record = {**description, "source_shape": list(shape), "events": tally.n_events,
              "electrons": tally.n_electrons, "stempress_version": __version__}
    if inputs:
        record["inputs"] = {str(k): str(v) for k, v in inputs.items()}
    return record


def count_warnings(source: Dataset4D, params: CountingParams, tally: CountTally,
                   max_input: float | None) -> list[str]:
    """What looks wrong once the counts are known, one actionable line each (``source``: the frames counted;
    ``max_input``: their largest value, None if there were none)."""
    from stempress.data.open import scan_shape_note

    found = [note] if (note := scan_shape_note(source)) is not None else []
    if tally.n_electrons == 0:
        found.append(_nothing_counted(source, params, max_input))
    hot = _hot_pixel(tally.pattern)
    if hot is not None:
        found.append(_hot_pixel_warning(tally.pattern, hot))
    return found


def _nothing_counted(source: Dataset4D, params: CountingParams, max_input: float | None) -> str:
    threshold = f"{params.threshold:g} {'ADU' if params.threshold_unit == 'adu' else 'read-noise sigmas'}"
    largest = "no frames" if max_input is None else f"the largest frame value is {max_input:.4g}"
    line = (f"{source.name}: no electrons counted: {largest}, and a pixel counts when its value above "
            f"dark ({_in_words(params.dark)}) exceeds {threshold}, then is divided by the gain "
            f"({_in_words(params.gain)} ADU per electron) and rounded; check --dark, --threshold and --gain")
    gain = np.asarray(params.gain)
    if np.dtype(source.dtype).kind == "f" and gain.ndim == 0 and float(gain) == 1.0:
        line += (" (these frames are floats and the gain is the default 1: give --gain in ADU per electron; frames "
                 "already normalised to electrons need a threshold below one electron)")
    return line


def _in_words(value: Reference) -> str:
    summary = _summary(value)
    return f"{summary:g}" if isinstance(summary, float) else f"per pixel, mean {summary['mean']:.4g}"


def _hot_pixel(pattern: np.ndarray) -> tuple[int, int] | None:
    """The pixel that stands out most from all of its 8 neighbours, if any stands out enough to be a hot pixel."""
    if pattern.size < 9 or min(pattern.shape) < 3:
        return None
    totals = pattern.astype(np.float64)
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    neighbours = ndimage.maximum_filter(totals, footprint=ring, mode="nearest")  # a disk's rim has a bright one
    excess = np.where(totals >= HOT_MIN_ELECTRONS, totals / (neighbours + 1.0), 0.0)
    y, x = (int(v) for v in np.unravel_index(int(np.argmax(excess)), excess.shape))
    return (y, x) if excess[y, x] >= HOT_FACTOR else None


def _hot_pixel_warning(pattern: np.ndarray, hot: tuple[int, int]) -> str:
    """Name the hot pixel and, where it pulls the beam centre found on the counts, say so."""
    from stempress.reduce.calibration import find_bf_disk

    total = int(pattern.sum())
    y, x = hot
    line = (f"detector pixel ({y}, {x}) holds {int(pattern[y, x]):,} of {total:,} electrons, far more than its "
            "neighbours: a hot pixel? Mask it before counting (a dark reference with a high value there, --dark)")
    try:
        cy, cx, _radius = find_bf_disk(pattern)
    except StempressError:
        return line
    if np.hypot(cy - y, cx - x) <= 2.0:
        line += (f"; the beam centre measured on these counts, ({cy:.1f}, {cx:.1f}), sits next to it, so reduce "
                 "would centre its detectors on the hot pixel")
    return line


def read_counting_record(path: str | Path) -> dict[str, Any]:
    """The record ``count_to_file`` stored in an event file (raw_csr .toml, stempy or entropy-coded HDF5)."""
    path = Path(path)
    if path.suffix.lower() == ".toml":
        try:
            with open(path, "rb") as fh:
                found = read_toml_record(tomllib.load(fh))
        except FileNotFoundError:
            raise StempressError(f"{path}: no such file; check the path") from None
    else:
        with open_hdf5(path) as f:
            found = read_h5_record(f)
    table = found.get("counting")
    if not isinstance(table, dict):
        raise StempressError(f"{path}: holds no counting record; it was not written by stempress count")
    return table


# -- accuracy against known counts ---------------------------------------------------------------------------
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


#: Offsets tried after the exact pixel when matching counted to true electrons: edges first, then corners.
_NEIGHBOURS = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))


def _matched(truth: np.ndarray, counted: np.ndarray) -> tuple[int, int]:
    """Electrons counted at their true pixel, and within one pixel of it (greedy: each one used once).

    Integer ``(frames, det_y, det_x)`` arrays; a counted electron one pixel away (8-neighbourhood) from an
    unmatched true one is a hit, which is how a centroid that rounds to the next pixel should score.
    """
    exact = np.minimum(truth, counted)
    t, c = truth - exact, counted - exact
    h, w = t.shape[-2:]
    near = 0
    for dy, dx in _NEIGHBOURS:
        ts = t[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        cs = c[:, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
        m = np.minimum(ts, cs)
        ts -= m
        cs -= m
        near += int(m.sum())
    return int(exact.sum()), int(exact.sum()) + near


def counting_accuracy(counted: np.ndarray | Dataset4D, truth: np.ndarray | Dataset4D) -> dict[str, float]:
    """How close counts are to the true electrons (arrays or sources of the same shape, read in blocks).

    Keys: ``total_counted``, ``total_true``, ``total_error_percent`` (signed), ``pixel_rms`` (electrons),
    ``frame_rms`` (electrons per frame), ``exact_fraction`` (all pixels), ``exact_fraction_hit`` (pixels
    with true electrons: zeros dominate ``exact_fraction`` in sparse cubes), ``right_pixel_fraction`` and
    ``within_1px_fraction`` (true electrons with a counted one at their pixel / within one pixel, each
    counted one used once), ``false_per_frame`` and ``missed_per_frame`` (counted electrons with no true
    one within a pixel, and the reverse), ``frames``.
    """
    shape_c, blocks_c = _blocks(counted)
    shape_t, blocks_t = _blocks(truth)
    if shape_c != shape_t:
        raise StempressError(f"counted shape {shape_c} differs from truth shape {shape_t}; compare the same cube")
    total_c = total_t = sq = frame_sq = exact = hit = exact_hit = n = frames = right = near = 0
    for c, t in zip(_rows(blocks_c), _rows(blocks_t), strict=True):
        c = c.astype(np.int64)
        t = t.astype(np.int64)
        total_c += int(c.sum())
        total_t += int(t.sum())
        sq += int(np.square(c - t).sum())
        frame_sq += int(np.square(c.sum(axis=(-2, -1)) - t.sum(axis=(-2, -1))).sum())
        same = c == t
        exact += int(same.sum())
        nz = t > 0
        hit += int(nz.sum())
        exact_hit += int((same & nz).sum())
        n += c.size
        frames += c.size // (c.shape[-2] * c.shape[-1])
        at, within = _matched(t.reshape(-1, *t.shape[-2:]), c.reshape(-1, *c.shape[-2:]))
        right += at
        near += within
    err = 100.0 * (total_c - total_t) / total_t if total_t else (0.0 if total_c == 0 else float("inf"))
    return {
        "total_counted": float(total_c),
        "total_true": float(total_t),
        "total_error_percent": float(err),
        "pixel_rms": float(np.sqrt(sq / n)),
        "frame_rms": float(np.sqrt(frame_sq / frames)),
        "exact_fraction": float(exact / n),
        "exact_fraction_hit": float(exact_hit / hit) if hit else 1.0,
        "right_pixel_fraction": float(right / total_t) if total_t else 1.0,
        "within_1px_fraction": float(near / total_t) if total_t else 1.0,
        "false_per_frame": float((total_c - near) / frames),
        "missed_per_frame": float((total_t - near) / frames),
        "frames": float(frames),
    }


def _rows(blocks: Any) -> Iterator[np.ndarray]:
    """Single scan rows from blocks of any height, so two sources with different block sizes line up."""
    for block in blocks:
        yield from block
