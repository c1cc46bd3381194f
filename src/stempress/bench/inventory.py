"""What is in a cube, measured in one streaming pass: the study's dataset_inventory.csv plus the entropy bounds.

The study reports ratios next to an inventory (sparsity, maximum, bit depth) because those explain them;
the value histogram and the mean pattern add the limits a ratio can be judged against (``bounds``).
Memory depends on the block size, the detector size and the number of distinct values, never on the number
of scan positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stempress.bench.bounds import order0_entropy_bits, poisson_bound, sparsity_bound
from stempress.bench.results import atomic_write, read_table
from stempress.data.base import Block, Dataset4D
from stempress.engine import run
from stempress.errors import StempressError
from stempress.poisson import poisson_entropy_bits
from stempress.sinks.protocol import RunInfo

INVENTORY_CSV = "inventory.csv"

#: Non-negative values whose bin index is below this are histogrammed with ``np.bincount`` (a dense table of
#: this many bins at most); larger or negative values and other floats go through ``np.unique``.
BINCOUNT_CAP = 1 << 20
#: Floats are binned in steps of 1/FLOAT_SCALE when all of a piece's values are such multiples.
FLOAT_SCALE = 16
#: Distinct values kept at most; beyond it (near-continuous float data) the histogram is dropped and the
#: order-0 entropy reported as NaN, so memory stays bounded.
MAX_DISTINCT = 1 << 22
#: Thresholds of the study's overflow counts (12-bit and 14-bit counters).
THRESHOLDS = (4095, 16383)
#: Elements handled together: all per-value passes run over one piece while it is still in cache.
PIECE_ELEMENTS = 1 << 20
#: The bounds, as named in ``tightest_bound``.
BOUND_NAMES = ("sparsity", "order0", "poisson")

#: The study's dataset_inventory.csv columns we reproduce (file-specific ones are left out), then ours.
STUDY_COLUMNS = ("dataset_id", "dtype", "itemsize_bytes", "shape", "n_elements", "uncompressed_bytes",
                 "uncompressed_gb", "uncompressed_mb", "zero_count", "sparsity_fraction", "max_value",
                 "max_location", "max_bits_int", "count_gt_4095", "count_gt_16383")
EXTRA_COLUMNS = ("entropy_order0_bits", "poisson_bits_per_value", "bound_sparsity", "bound_order0",
                 "bound_poisson", "tightest_bound", "tightest_bound_ratio")
COLUMNS = STUDY_COLUMNS + EXTRA_COLUMNS


class _ValueCounter:
    """Histogram of values merged across pieces: dense bins when values are small multiples of 1/scale,
    sorted (value, count) arrays otherwise.

    Floats get scale 16, so the study's 2x2 and 4x4 mean-binned counts (multiples of 1/4 and 1/16) take
    the bincount path too (about 3x faster than sorting them with ``np.unique``).
    """

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.scale = 1 if dtype.kind in "ui" else FLOAT_SCALE
        self.dense = np.zeros(0, dtype=np.int64)
        self.values = np.empty(0, dtype=dtype)
        self.counts = np.empty(0, dtype=np.int64)
        self.dropped = False

    def add(self, flat: np.ndarray, zeros: int, low: float, high: float) -> None:
        if self.dropped:
            return
        # sparse pieces: zeros are known from count_nonzero, so histogram only the rest (several times faster)
        skip_zeros = 2 * zeros > flat.size
        data = flat[flat != 0] if skip_zeros else flat
        extra_zeros = zeros if skip_zeros else 0
        if low >= 0 and high * self.scale < BINCOUNT_CAP:
            keys = self._keys(data)
            if keys is not None:
                bins = np.bincount(keys, minlength=1)
                if bins.size > self.dense.size:
                    self.dense = np.concatenate([self.dense, np.zeros(bins.size - self.dense.size, np.int64)])
                self.dense[: bins.size] += bins
                self.dense[0] += extra_zeros
                return
        values, counts = np.unique(data, return_counts=True)
        if extra_zeros:
            values = np.concatenate([values, np.zeros(1, self.dtype)])
            counts = np.concatenate([counts, [extra_zeros]])
        self.values, self.counts = _merge(self.values, self.counts, values, counts)
        if self.values.size > MAX_DISTINCT:
            self.dropped = True
            self.values, self.counts = np.empty(0, self.dtype), np.empty(0, np.int64)

    def _keys(self, data: np.ndarray) -> np.ndarray | None:
        """Bin indices value * scale, or None when some value is not a multiple of 1/scale (or is NaN)."""
        if self.scale == 1:
            return data.astype(np.intp, copy=False)
        scaled = data * data.dtype.type(self.scale)  # exact: a power of two
        with np.errstate(invalid="ignore"):  # NaN casts to garbage, and then fails the comparison
            keys = scaled.astype(np.intp)
        return keys if np.array_equal(scaled, keys) else None

    def result(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.dropped:
            return None
        used = np.flatnonzero(self.dense)
        values = (used / self.scale if self.scale != 1 else used).astype(self.dtype)
        return _merge(self.values, self.counts, values, self.dense[used])


def _merge(v1: np.ndarray, c1: np.ndarray, v2: np.ndarray, c2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two histograms as one, values sorted and unique."""
    if v1.size == 0:
        return v2, c2.astype(np.int64)
    values, inverse = np.unique(np.concatenate([v1, v2]), return_inverse=True)
    counts = np.zeros(values.size, dtype=np.int64)
    np.add.at(counts, inverse.ravel(), np.concatenate([c1, c2]).astype(np.int64))
    return values, counts


@dataclass(frozen=True, eq=False)  # eq would compare arrays
class DatasetProfile:
    """Everything one pass learns about a cube; the derived numbers are computed from it on demand."""

    name: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    zero_count: int
    min_value: float
    max_value: float
    max_location: tuple[int, int, int, int]
    count_gt_4095: int
    count_gt_16383: int
    hist_values: np.ndarray | None  # None when the cube had more than MAX_DISTINCT distinct values
    hist_counts: np.ndarray | None
    mean_pattern: np.ndarray  # (det_y, det_x) float64, mean over scan positions

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def bits(self) -> int:
        return self.dtype.itemsize * 8

    @property
    def uncompressed_bytes(self) -> int:
        return self.n_elements * self.dtype.itemsize

    @property
    def sparsity(self) -> float:
        return self.zero_count / self.n_elements

    @property
    def is_count_data(self) -> bool:
        """Non-negative integers: the only data a Poisson model describes."""
        return self.dtype.kind in "ui" and self.min_value >= 0

    @property
    def max_bits_int(self) -> int | None:
        """Bits the largest value needs, as the study reports it for integer cubes (None for floats)."""
        if self.dtype.kind not in "ui":
            return None
        return max(int(self.max_value), 0).bit_length()

    @cached_property
    def entropy_order0_bits(self) -> float:
        if self.hist_values is None or self.hist_counts is None:
            return math.nan
        return order0_entropy_bits(self.hist_values, self.hist_counts)

    @cached_property
    def poisson_bits_per_value(self) -> float:
        if not self.is_count_data:
            return math.nan
        return float(np.mean(poisson_entropy_bits(self.mean_pattern)))

    @cached_property
    def bounds(self) -> dict[str, float]:
        """The three limits as compression ratios (inf: the model needs no bits; NaN: does not apply)."""
        h0 = self.entropy_order0_bits
        order0 = math.nan if math.isnan(h0) else (math.inf if h0 == 0 else self.bits / h0)
        poisson = poisson_bound(self.mean_pattern, self.bits) if self.is_count_data else math.nan
        sparsity = float(sparsity_bound(self.sparsity, self.bits))
        return dict(zip(BOUND_NAMES, (sparsity, order0, poisson), strict=True))

    @property
    def tightest_bound(self) -> tuple[str, float]:
        """The smallest finite bound and its name; ("", inf) when none is finite (e.g. an all-zero cube)."""
        finite = {name: r for name, r in self.bounds.items() if math.isfinite(r)}
        if not finite:
            return "", math.inf
        name = min(finite, key=finite.__getitem__)
        return name, finite[name]

    def inventory_row(self) -> dict[str, Any]:
        """One row of inventory.csv: the study's columns with its rounding, then entropies and bounds."""
        tightest, tightest_ratio = self.tightest_bound
        return {
            "dataset_id": self.name,
            "dtype": str(self.dtype),
            "itemsize_bytes": self.dtype.itemsize,
            "shape": str(tuple(self.shape)),
            "n_elements": self.n_elements,
            "uncompressed_bytes": self.uncompressed_bytes,
            "uncompressed_gb": round(self.uncompressed_bytes / 1e9, 6),
            "uncompressed_mb": round(self.uncompressed_bytes / 1e6, 3),
            "zero_count": self.zero_count,
            "sparsity_fraction": round(self.sparsity, 6),
            "max_value": self.max_value,
            "max_location": str(tuple(self.max_location)),
            "max_bits_int": self.max_bits_int,
            "count_gt_4095": self.count_gt_4095,
            "count_gt_16383": self.count_gt_16383,
            "entropy_order0_bits": self.entropy_order0_bits,
            "poisson_bits_per_value": self.poisson_bits_per_value,
            "bound_sparsity": self.bounds["sparsity"],
            "bound_order0": self.bounds["order0"],
            "bound_poisson": self.bounds["poisson"],
            "tightest_bound": tightest,
            "tightest_bound_ratio": tightest_ratio,
        }


class ProfileBuilder:
    """Accumulates a profile block by block, so a pass that already reads the cube can profile it too.

    Blocks must arrive in scan order (the maximum's location is its first occurrence in C order).
    """

    def __init__(self, name: str, shape: tuple[int, int, int, int], dtype: np.dtype) -> None:
        self.name, self.shape, self.dtype = name, tuple(int(n) for n in shape), np.dtype(dtype)
        self.zero_count = 0
        self.min_value = math.inf
        self.max_value = -math.inf
        self.max_location: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.over = dict.fromkeys(THRESHOLDS, 0)
        self.counter = _ValueCounter(self.dtype)
        self.pattern_sum = np.zeros(self.shape[2:], dtype=np.float64)
        self.rows_seen = 0

    def add(self, block: Block) -> None:
        data = block.data
        if data.shape[1:] != self.shape[1:] or data.dtype != self.dtype:
            raise ValueError(f"block {data.shape} {data.dtype} does not fit cube {self.shape} {self.dtype}")
        frames = data.reshape(-1, *self.shape[2:])
        first_frame = block.start * self.shape[1]
        # pieces of whole frames small enough to stay in cache across the several passes below
        step = max(1, PIECE_ELEMENTS // max(1, frames[0].size))
        for i in range(0, frames.shape[0], step):
            self._add_frames(frames[i : i + step], first_frame + i)
        self.rows_seen += data.shape[0]

    def _add_frames(self, frames: np.ndarray, first_frame: int) -> None:
        flat = frames.reshape(-1)
        zeros = flat.size - int(np.count_nonzero(flat))
        high, low = frames.max(), frames.min()
        if self.dtype.kind == "f" and (np.isnan(high) or np.isnan(low)):  # NaN poisons max/min; skip it
            high, low = np.nanmax(frames), np.nanmin(frames)  # (all-NaN pieces give NaN and never win)
        if high > self.max_value:
            at = int(np.argmax(flat)) if self.dtype.kind in "ui" else int(np.argmax(flat == high))
            frame, det_y, det_x = np.unravel_index(at, frames.shape)
            scan_y, scan_x = divmod(first_frame + int(frame), self.shape[1])
            self.max_value = float(high)
            self.max_location = (scan_y, scan_x, int(det_y), int(det_x))
        self.min_value = min(self.min_value, float(low))
        for threshold in THRESHOLDS:
            if high > threshold:
                self.over[threshold] += int(np.count_nonzero(flat > threshold))
        self.zero_count += zeros
        self.counter.add(flat, zeros, float(low), float(high))
        self.pattern_sum += frames.sum(axis=0, dtype=np.float64)

    def finish(self) -> DatasetProfile:
        if self.rows_seen != self.shape[0]:
            raise ValueError(f"{self.name}: saw {self.rows_seen} of {self.shape[0]} scan rows")
        hist = self.counter.result()
        return DatasetProfile(
            name=self.name, shape=self.shape, dtype=self.dtype, zero_count=self.zero_count,  # type: ignore[arg-type]
            min_value=self.min_value, max_value=self.max_value, max_location=self.max_location,
            count_gt_4095=self.over[4095], count_gt_16383=self.over[16383],
            hist_values=None if hist is None else hist[0], hist_counts=None if hist is None else hist[1],
            mean_pattern=self.pattern_sum / (self.shape[0] * self.shape[1]),
        )


class StatisticsSink:
    """The statistics pass as an engine sink (blocks in scan order): ``finish()`` gives the ``DatasetProfile``,
    so a pass that already reads the cube (a benchmark's staging, ``ingest``) can profile it too."""

    name = "statistics"

    def open(self, info: RunInfo) -> None:
        self.builder = ProfileBuilder(info.name, info.shape, info.dtype)

    def consume(self, block: Block) -> None:
        self.builder.add(block)

    def finish(self) -> DatasetProfile:
        return self.builder.finish()


def profile_dataset(source: Dataset4D, rows: int | None = None) -> DatasetProfile:
    """Profile a cube in one streaming pass of ``rows`` scan rows per block (default: the engine's budget)."""
    (profile,) = run(source, [StatisticsSink()], rows=rows)
    return profile


def inventory_table(profiles: Iterable[DatasetProfile]) -> pd.DataFrame:
    """inventory.csv as a frame; max_bits_int stays an integer column with blanks for floats, as the study's."""
    frame = pd.DataFrame([p.inventory_row() for p in profiles], columns=list(COLUMNS))
    frame["max_bits_int"] = frame["max_bits_int"].astype("Int64")
    return frame


def write_inventory(out: Path, profiles: Iterable[DatasetProfile]) -> Path:
    """Write ``out/inventory.csv`` whole or not at all."""
    frame = inventory_table(profiles)
    return atomic_write(Path(out) / INVENTORY_CSV, lambda p: frame.to_csv(p, index=False))


def read_inventory(out: Path) -> pd.DataFrame:
    """Read a results folder's inventory.csv (or the study's dataset_inventory.csv given as a file)."""
    path = Path(out)
    path = path / INVENTORY_CSV if path.is_dir() else path
    if not path.exists():
        raise StempressError(f"{path}: no dataset inventory; rerun `stempress bench` to write {INVENTORY_CSV}")
    return read_table(path)
