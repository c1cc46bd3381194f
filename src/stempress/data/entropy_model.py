"""The Poisson model behind the entropy code: per-pixel mean counts grouped into classes, and each class's tables.

Why two kinds of class: a pixel that is hit often (the bright-field disk, lambda >= ``SPARSE_BELOW``) is cheapest
to code as one symbol per pixel, but most of a counted detector is dark (lambda ~1e-3), and coding every one of
its zeros would cost a symbol each for almost no information. Dark ("sparse") classes code only their events:
the number of events in a chunk, the gap before each event (geometric for i.i.d. Poisson pixels, so coding gaps
loses nothing against the per-pixel bound) and each event's count (zero-truncated Poisson). The work then grows
with the number of electrons, not of pixels.

Tables are computed once when the model is fitted, rounded to float16 and stored in the file, so a decoder feeds
constriction exactly the encoder's numbers on any platform; every number the decoder derives at run time is an
integer or a correctly rounded IEEE operation (product, square root, ``frexp``).
"""

from __future__ import annotations

import lzma
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, ndtr

#: The class grids ``fit_model`` chooses from: (dark, bright) classes per factor of two of lambda, coarse to fine.
#: A finer grid codes each pixel closer to its own mean (a bright class's mismatch costs ~lambda * delta^2 / 2 nats
#: per pixel; a dark class's is far below its ~lambda * ln(1/lambda) entropy) but stores a bigger class map and more
#: tables, and a dark class adds an event count per chunk: a small scan pays for a fine grid, a long one gains.
GRIDS = ((1, 4), (2, 8), (4, 16), (8, 32))
#: Lambdas below this share the lowest class (a never-hit pixel still keeps every count codable).
LAMBDA_FLOOR = 1e-7
#: Class lambdas above this are coded as this: a window there holds almost none of the mass (values are escaped)
#: and float64 still computes its probabilities (near 2**64 it does not).
LAMBDA_CEILING = 2.0**40
#: Classes whose mean count is below this code their events (gaps) instead of every pixel.
SPARSE_BELOW = 0.2
#: Half-width of each count window in Poisson sigmas (plus a few counts for tiny lambda).
WINDOW_SIGMAS = 8.0
#: Largest table per class: huge counts (integrating detectors, uint32) are escaped rather than tabled.
MAX_ALPHABET = 4096
#: Smallest escape probability: every value stays codable; costs ~1.4e-6 bits per symbol.
ESCAPE_FLOOR = 1e-6
#: Gaps split as ``q * 2**m + r`` (Golomb); ``m`` is at most this, so a remainder fits constriction's Uniform.
MAX_GOLOMB_BITS = 22
#: The top bits of a gap remainder get a table (its geometric slope); the rest are uniform (their slope is < 1 %).
HIGH_BITS = 4
#: Gap quotients are tabled until their tail mass falls below this; longer ones are escaped.
GAP_TAIL = 1e-7
#: Entries of the shared table for a chunk's event-count deviation (in units of ~sigma/2).
COUNT_TABLE_SIZE = 64

#: Tables are stored as float16: half of float32's bytes (the model is most of a small file's overhead), and an
#: 11-bit mantissa costs ~1e-7 bits per symbol; a probability that underflows to 0 still gets constriction's
#: smallest nonzero probability, so every symbol stays codable.
TABLE_DTYPE = np.dtype(np.float16)

DENSE_LEVEL_OFFSET = 1 << 30  # dense class levels sort after every sparse one

#: A class's per-class numbers are kept as float32 (rounded when fitted, so encoder and decoder agree): half the
#: bytes of float64, and the count coding only needs ~1e-3 of its expected number of events.
CLASS_FLOAT_DTYPE = np.dtype(np.float32)
#: The model's integer columns per class, as stored.
CLASS_INT = ("sparse", "lo", "golomb_bits", "low_bits", "first_table")
#: The stored model (format version 4 and on) is one xz stream: LZMA2 at its strongest preset is ~15 % smaller than gzip
#: on the class map and the float16 tables; a 256 kB dictionary holds any model and takes ~30 ms, not ~130.
_XZ = {"format": lzma.FORMAT_XZ, "check": lzma.CHECK_NONE,
       "filters": [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 18}]}


@dataclass(frozen=True)
class PoissonModel:
    """Pixel classes and their tables; the last table is the shared event-count table.

    A dense class has one table (counts ``lo .. lo+K-1`` + escape). A sparse class has three consecutive tables
    starting at ``first_table``: event counts minus one (+ escape), gap quotients (+ escape), gap remainder high
    bits (no escape).
    """

    lam: np.ndarray  # (n_pixels,) float64: the fitted mean pattern, flat (a file keeps only the class lambdas)
    class_of_pixel: np.ndarray  # (n_pixels,) int32 into the class arrays; sparse classes first
    class_lambda: np.ndarray  # (n_classes,) float64
    sparse: np.ndarray  # (n_classes,) bool
    p_event: np.ndarray  # (n_classes,) float64: P(count > 0), the stored number the count coding starts from
    lo: np.ndarray  # (n_classes,) int64: first count of a dense class's window
    golomb_bits: np.ndarray  # (n_classes,) int64: m of a sparse class's gaps
    low_bits: np.ndarray  # (n_classes,) int64: uniform low bits of a gap remainder
    first_table: np.ndarray  # (n_classes,) int64
    table_offsets: np.ndarray  # (n_tables + 1,) int64 into ``tables``
    tables: np.ndarray  # float64 holding TABLE_DTYPE values (what the file keeps), concatenated
    grid: tuple[int, int] | None = None  # (dark, bright) classes per octave it was fitted on; None once loaded
    #: (n_groups, n_pixels) int32: the class map of each group of scan positions, ``class_of_pixel`` (the map of the
    #: whole cube's mean) where a group's own class would not pay for storing it; the classes and their tables are
    #: shared. None: one group, ``class_of_pixel``.
    group_maps: np.ndarray | None = None
    group_positions: np.ndarray | None = None  # (n_groups,) scan positions per group when fitted; None once loaded

    @property
    def n_classes(self) -> int:
        return int(self.class_lambda.size)

    @property
    def n_groups(self) -> int:
        return 1 if self.group_maps is None else int(self.group_maps.shape[0])

    def maps(self) -> np.ndarray:
        """(n_groups, n_pixels): each group's class of every pixel."""
        return self.class_of_pixel[None] if self.group_maps is None else self.group_maps

    @property
    def n_tables(self) -> int:
        return int(self.table_offsets.size - 1)

    def table(self, t: int) -> np.ndarray:
        return self.tables[self.table_offsets[t]:self.table_offsets[t + 1]]

    def order(self, group: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Pixels sorted by their class in ``group``'s map (stable) and the class boundaries in that order."""
        classes = self.maps()[group]
        order = np.argsort(classes, kind="stable")
        bounds = np.searchsorted(classes[order], np.arange(self.n_classes + 1))
        return order, bounds

    def bound_bits(self) -> float:
        """Poisson entropy (bits per frame) of the model's own class lambdas: what an ideal coder of it spends
        (groups weighted by the positions they had when fitted; equally once loaded)."""
        from stempress.poisson import poisson_entropy_bits

        maps = self.maps()
        weights = np.ones(maps.shape[0]) if self.group_positions is None else np.asarray(self.group_positions, float)
        bits = [float(np.sum(poisson_entropy_bits(self.class_lambda[m]))) for m in maps]
        return float(np.dot(weights, bits) / weights.sum())


def stored(p: np.ndarray) -> np.ndarray:
    """Round to what the file keeps (``TABLE_DTYPE``), as float64: encoder and decoder then see the same numbers."""
    return np.asarray(p, dtype=np.float64).astype(TABLE_DTYPE).astype(np.float64)


def _with_escape(p: np.ndarray, tail: float) -> np.ndarray:
    """Append the escape mass, rounded to the stored precision; trailing entries that round to 0 are dropped into
    the escape (they would cost the file bytes and code with constriction's smallest probability anyway)."""
    kept = stored(p)
    n = max(1, int(np.flatnonzero(kept)[-1]) + 1 if kept.any() else 1)
    return np.append(kept[:n], stored(np.array([max(ESCAPE_FLOOR, tail + float(p[n:].sum()))])))


def _poisson_pmf(k: np.ndarray, lam: float) -> np.ndarray:
    return np.exp(k * math.log(lam) - lam - gammaln(k + 1.0))


def _window(lam: float, first: int) -> tuple[int, int]:
    sd = math.sqrt(lam)
    lo = max(first, math.floor(lam - WINDOW_SIGMAS * sd))
    hi = math.ceil(lam + WINDOW_SIGMAS * sd + 8)
    if hi - lo > MAX_ALPHABET:
        lo = max(first, round(lam) - MAX_ALPHABET // 2)
        hi = lo + MAX_ALPHABET
    return lo, hi


def dense_table(lam: float) -> tuple[int, np.ndarray]:
    """Window start and the probabilities of counts lo..lo+K-1 and escape under Poisson(lam)."""
    lo, hi = _window(lam, 0)
    p = _poisson_pmf(np.arange(lo, hi, dtype=np.float64), lam)
    nonzero = np.flatnonzero(stored(p))
    skip = int(nonzero[0]) if nonzero.size else 0  # leading counts that round to 0: the window starts after them
    return lo + skip, _with_escape(p[skip:], 1.0 - float(p[skip:].sum()))


def event_count_table(lam: float) -> np.ndarray:
    """Probabilities of an event's count minus one (zero-truncated Poisson(lam)) and escape."""
    _, hi = _window(lam, 1)  # symbols are count - 1 from 1 up: sparse lambdas are small, the window starts at 1
    p = _poisson_pmf(np.arange(1, hi, dtype=np.float64), lam) / -math.expm1(-lam)
    return _with_escape(p, 1.0 - float(p.sum()))


def gap_tables(lam: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Golomb bits m, uniform low bits, the quotient table (+ escape) and the remainder's high-bits table.

    A gap (zeros before an event) is geometric with ratio theta = exp(-lam); choosing 2**m ~ ln 2 / lam makes the
    quotient's ratio ~1/2, and quotient and remainder are independent, so the split costs nothing.
    """
    m = int(min(MAX_GOLOMB_BITS, max(0, round(math.log2(math.log(2.0) / lam)))))
    rho = math.exp(-lam * 2.0**m)
    n_q = int(min(MAX_ALPHABET, max(1, math.ceil(math.log(GAP_TAIL) / math.log(rho)))))
    q = (1.0 - rho) * rho ** np.arange(n_q, dtype=np.float64)
    high = min(m, HIGH_BITS)
    low = m - high
    w = np.exp(-lam * 2.0**low * np.arange(2**high, dtype=np.float64))
    return m, low, _with_escape(q, rho**n_q), stored(w / w.sum())


def count_table() -> np.ndarray:
    """The shared table of ``zigzag(N - round(mu)) >> k`` for a chunk's event count N of a sparse class.

    N is ~Normal(mu, sigma) and ``2**k <= sigma < 2**(k+1)``, so the symbol is ~``2|z| sigma / 2**k``: its law is
    averaged over that octave of sigma (log-uniform), which keeps the table one fixed, stored array.
    """
    edges = np.arange(COUNT_TABLE_SIZE + 1, dtype=np.float64)
    p = np.zeros(COUNT_TABLE_SIZE)
    scales = 2.0 ** np.linspace(0.0, 1.0, 17)
    for s in scales:
        p += 2.0 * (ndtr((edges[1:]) / (2.0 * s)) - ndtr(edges[:-1] / (2.0 * s)))
    p /= scales.size
    return _with_escape(p, 1.0 - float(p.sum()))


def class_levels(lam: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Class level of each pixel on ``grid`` (dark, bright classes per octave): coarser log steps for sparse
    lambdas, finer ones (sorted after) for dense."""
    octaves = np.log2(np.maximum(lam, LAMBDA_FLOOR) / LAMBDA_FLOOR)
    sparse = np.floor(octaves * grid[0]).astype(np.int64)
    dense = DENSE_LEVEL_OFFSET + np.floor(octaves * grid[1]).astype(np.int64)
    return np.where(lam < SPARSE_BELOW, sparse, dense)


def fit_model(total: np.ndarray, n_positions: int, coded_positions: int | None = None,
              groupings: Iterable[tuple[np.ndarray, np.ndarray]] = ()) -> PoissonModel:
    """The model from per-pixel count sums over ``n_positions`` frames, on the grid of ``GRIDS`` and the grouping
    of scan positions that make the stored model plus the ideal code length of ``coded_positions`` such frames
    (default: these) under it smallest: a model fitted on a cube's first rows codes all of them.

    ``groupings``: candidate partitions of the positions, each (per-group sums (G, n_pixels), positions per group
    (G,)); one group (``total``) is always a candidate, so a cube whose patterns do not vary pays nothing.
    Smoothing: ``(S_i + mean_j S_j / n) / (n + 1)``, one prior frame of the overall mean, so a pixel never hit
    while fitting stays cheap to code later; a group's sums are smoothed with one frame of that overall pattern.
    """
    total = np.asarray(total, dtype=np.float64).reshape(-1)
    if n_positions < 1:
        raise ValueError("the model needs at least one frame")
    lam = (total + total.mean() / n_positions) / (n_positions + 1)
    scale = 1.0 if coded_positions is None else coded_positions / n_positions
    candidates = [(total[None], np.array([n_positions], np.float64), lam[None])]
    for sums, counts in groupings:
        sums, counts = np.asarray(sums, np.float64).reshape(-1, total.size), np.asarray(counts, np.float64)
        if sums.shape[0] > 1 and np.all(counts > 0):
            candidates.append((sums, counts, (sums + lam) / (counts[:, None] + 1.0)))
    best: tuple[float, PoissonModel] | None = None
    for sums, counts, lams in candidates:  # one group, then more and more: stop once more no longer pays
        labels = scale * n_positions * math.log2(counts.size)  # each position's group, coded uniformly
        found: tuple[float, PoissonModel] | None = None
        for grid in GRIDS:  # coarse to fine: stop once finer no longer pays
            model = _fit_on_grid(lam, lams, counts, grid)
            # the stored size estimated with zlib (~3 ms, against xz's ~30): it only ranks the candidates
            bits = (scale * _code_bits(model, sums, counts) + labels
                    + 8.0 * len(zlib.compress(_raw(model, (1, lam.size)), 6)))
            if found is not None and bits >= found[0]:
                break
            found = (bits, model)
        assert found is not None
        if best is not None and found[0] >= best[0]:
            break
        best = found
    assert best is not None
    return best[1]


def _code_bits(model: PoissonModel, sums: np.ndarray, counts: np.ndarray) -> float:
    """The model-dependent part of the frames' ideal code length in bits: per pixel and group, the Poisson
    log-likelihood of its ``n`` counts summing to ``S`` under its class lambda is ``S ln lambda - n lambda`` plus
    terms of the counts alone, so the sums suffice."""
    class_lam = model.class_lambda[model.maps()]
    return float(np.sum(counts[:, None] * class_lam - sums * np.log(class_lam))) / math.log(2.0)


def _fit_on_grid(lam: np.ndarray, lams: np.ndarray, counts: np.ndarray, grid: tuple[int, int]) -> PoissonModel:
    """The model of the groups' mean patterns ``lams`` (G, n_pixels) with classes on ``grid`` shared by the groups;
    ``lam`` is the overall mean pattern the model keeps, and its classes are each group's unless the group's own
    class saves more than ``EXCEPTION_BITS`` (see ``_own_classes``)."""
    grouped = lams.shape[0] > 1
    base_levels = class_levels(lam, grid)
    levels = np.where(_own_classes(lam, lams, counts, grid), class_levels(lams, grid), base_levels)
    all_levels, inverse = np.unique(np.concatenate([base_levels[None], levels]) if grouped else levels,
                                    return_inverse=True)
    everything = inverse.reshape(-1, lam.size).astype(np.int32)
    base, maps = everything[0], everything[1:] if grouped else everything
    sparse = all_levels < DENSE_LEVEL_OFFSET
    # each class codes with its members' mean lambda over the positions they stand for: the Poisson closest in KL
    class_lambda = _member_means(maps, lams, counts, all_levels.size)
    if grouped:  # a class only the mean map uses (no group codes with it) keeps its own members' lambda
        unused = np.bincount(maps.reshape(-1), minlength=all_levels.size) == 0
        class_lambda[unused] = _member_means(base[None], lam[None], np.ones(1), all_levels.size)[unused]
    class_lambda = _class_float(np.clip(class_lambda, LAMBDA_FLOOR, LAMBDA_CEILING))
    n = class_lambda.size
    lo, golomb, low, first = (np.zeros(n, np.int64) for _ in range(4))
    tables: list[np.ndarray] = []
    for c, value in enumerate(class_lambda.tolist()):
        first[c] = len(tables)
        if sparse[c]:
            golomb[c], low[c], q, high = gap_tables(value)
            tables += [event_count_table(value), q, high]
        else:
            lo[c], table = dense_table(value)
            tables.append(table)
    tables.append(count_table())
    offsets = np.zeros(len(tables) + 1, dtype=np.int64)
    np.cumsum([t.size for t in tables], out=offsets[1:])
    return PoissonModel(lam=lam, class_of_pixel=base, class_lambda=class_lambda,
                        sparse=sparse, p_event=_class_float(-np.expm1(-class_lambda)), lo=lo, golomb_bits=golomb,
                        low_bits=low, first_table=first, table_offsets=offsets, tables=np.concatenate(tables),
                        grid=grid, group_maps=maps if grouped else None,
                        group_positions=counts if grouped else None)


#: A group's pixel takes its own class instead of the mean map's where that saves more than this (bits over the
#: positions fitted): about what an exception costs in the stored maps, which are otherwise all the mean map's.
EXCEPTION_BITS = 8.0


def _own_classes(lam: np.ndarray, lams: np.ndarray, counts: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(G, n_pixels) bool: where a group's pixel codes enough shorter under its own level's lambda than under the
    mean map's level (each level stood for by its geometric middle) to pay for the exception."""
    if lams.shape[0] == 1:
        return np.ones(lams.shape, bool)
    mid_base, mid_own = _level_middle(lam, grid), _level_middle(lams, grid)
    sums = lams * counts[:, None]

    def cost(c: np.ndarray) -> np.ndarray:  # nats, up to terms of the counts alone
        return counts[:, None] * c - sums * np.log(c)

    return (cost(np.broadcast_to(mid_base, lams.shape)) - cost(mid_own)) / math.log(2.0) > EXCEPTION_BITS


def _level_middle(lam: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The geometric middle of each lambda's class level on ``grid``."""
    octaves = np.log2(np.maximum(lam, LAMBDA_FLOOR) / LAMBDA_FLOOR)
    per = np.where(lam < SPARSE_BELOW, grid[0], grid[1])
    return LAMBDA_FLOOR * 2.0 ** ((np.floor(octaves * per) + 0.5) / per)


def _member_means(maps: np.ndarray, lams: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """Each class's mean lambda over its members, each weighted by the positions its group stands for."""
    weights = np.repeat(counts, maps.shape[1])
    flat = maps.reshape(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(flat, lams.reshape(-1) * weights, n) / np.bincount(flat, weights, n)


def _class_float(values: np.ndarray) -> np.ndarray:
    """Round to what a version 4-5 file keeps (``CLASS_FLOAT_DTYPE``), as float64."""
    return np.asarray(values, np.float64).astype(CLASS_FLOAT_DTYPE).astype(np.float64)


#: The version of the packed layout ``pack_model`` writes (4: one class map, no group count).
PACKED_VERSION = 5


def pack_model(model: PoissonModel, det: tuple[int, int]) -> np.ndarray:
    """The model as one compressed byte array (format version 5): few HDF5 objects, each costing ~0.5 kB.

    Layout before compression (little-endian): int32 n_classes, n_tables, n_groups; int32 (n_classes, CLASS_INT);
    float32 (n_classes, 2) class lambda and p_event; int32 table sizes; float16 tables; then the class of each pixel
    in the mean map as the difference from its left neighbour modulo 256 (uint8; uint16 modulo 65536 above 256
    classes): the map is smooth along a detector row, so the differences are mostly small and compress better than
    the classes; with several groups of scan positions, then each group's map as its difference from that mean map
    (mostly zeros: a group keeps the mean map's class unless its own pays). Version 4 is the same without n_groups
    and the group maps.
    """
    return np.frombuffer(lzma.compress(_raw(model, det), **_XZ), np.uint8)


def _raw(model: PoissonModel, det: tuple[int, int]) -> bytes:
    """The bytes ``pack_model`` compresses."""
    ints = np.stack([getattr(model, k).astype(np.int64) for k in CLASS_INT], 1).astype("<i4")
    floats = np.stack([model.class_lambda, model.p_event], 1).astype("<f4")
    sizes = np.diff(model.table_offsets).astype("<i4")
    base = model.class_of_pixel.astype(np.int64)
    groups = np.zeros((0, base.size), np.int64) if model.group_maps is None else model.group_maps.astype(np.int64)
    width = 65536 if model.n_classes > 256 else 256
    parts = [np.array([model.n_classes, model.n_tables, model.n_groups], "<i4"), ints, floats, sizes,
             model.tables.astype(TABLE_DTYPE).astype("<f2"), _class_deltas(base, det, model.n_classes),
             ((groups - base) % width).astype("<u2" if width > 256 else "u1")]
    return b"".join(np.ascontiguousarray(part).tobytes() for part in parts)


def unpack_model(packed: np.ndarray, det: tuple[int, int], version: int = PACKED_VERSION) -> PoissonModel:
    """The inverse of ``pack_model`` (``version`` 4 or 5); a ValueError where the bytes do not hold a model for
    ``det``."""
    try:
        raw = lzma.decompress(np.asarray(packed, np.uint8).tobytes(), format=lzma.FORMAT_XZ)
    except lzma.LZMAError as exc:
        raise ValueError(f"the stored model does not decompress ({exc})") from None
    at = 0

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal at
        size = np.dtype(dtype).itemsize * count
        if count < 0 or at + size > len(raw):
            raise ValueError("the stored model is truncated")
        out = np.frombuffer(raw, dtype, count, at)
        at += size
        return out

    head = [int(v) for v in take("<i4", 3 if version >= 5 else 2)]
    n_classes, n_tables, n_groups = head[0], head[1], head[2] if version >= 5 else 1
    if n_groups < 1:
        raise ValueError(f"the stored model has {n_groups} groups")
    ints = take("<i4", n_classes * len(CLASS_INT)).reshape(n_classes, len(CLASS_INT)).astype(np.int64)
    floats = take("<f4", n_classes * 2).reshape(n_classes, 2).astype(np.float64)
    sizes = take("<i4", n_tables).astype(np.int64)
    offsets = np.zeros(n_tables + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    tables = take("<f2", int(offsets[-1])).astype(np.float64)
    wide = n_classes > 256
    width = 65536 if wide else 256
    n_pixels = det[0] * det[1]
    deltas = take("<u2" if wide else "u1", n_pixels).reshape(det)
    n_maps = n_groups if n_groups > 1 else 0
    others = take("<u2" if wide else "u1", n_maps * n_pixels).reshape(n_maps, n_pixels)
    if at != len(raw):
        raise ValueError("the stored model has trailing bytes")
    class_of_pixel = (np.cumsum(deltas, axis=1, dtype=np.int64) % width).reshape(-1)
    maps = np.concatenate([class_of_pixel[None], (others.astype(np.int64) + class_of_pixel) % width])  # mean, groups
    if maps.size and int(maps.max()) >= n_classes:
        raise ValueError("the stored model assigns a pixel to a class it does not have")
    maps = maps.astype(np.int32)
    arrays = {k: ints[:, i] for i, k in enumerate(CLASS_INT)}
    arrays["sparse"] = arrays["sparse"].astype(bool)
    return PoissonModel(lam=floats[:, 0][maps[0]], class_of_pixel=maps[0], class_lambda=floats[:, 0],
                        p_event=floats[:, 1], table_offsets=offsets, tables=tables,
                        group_maps=maps[1:] if n_groups > 1 else None, **arrays)


def _class_deltas(class_of_pixel: np.ndarray, det: tuple[int, int], n_classes: int) -> np.ndarray:
    """Each pixel's class minus its left neighbour's (the first of a row: minus 0), modulo the stored width."""
    wide = n_classes > 256
    classes = class_of_pixel.astype(np.int64).reshape(det)
    deltas = np.diff(classes, axis=1, prepend=0) % (65536 if wide else 256)
    return deltas.astype("<u2" if wide else "u1")
