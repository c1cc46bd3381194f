"""Groups of scan positions for the entropy model: where the beam is changes the pattern, so one mean pattern fits
no position well.

Why: on a cube whose contrast varies with scan position (grains, thickness) each pixel's count follows the pattern
of its position, not the cube's mean; coding it against the mean costs the gap between the mean-pattern Poisson
bound and the true one, and the mixture's overdispersion on top. Positions are clustered (k-means, fixed seed, on
the square root of each frame binned into ``CELLS`` x ``CELLS`` cells: close to Poisson deviance, and cheap; fewer
groups by merging its centres, Ward's rule) and each group gets a class map of its own; ``entropy_model.fit_model``
weighs each candidate count (``GROUP_COUNTS``) against the single pattern, so a cube that does not vary keeps one
group. The coder then puts each position in the group whose map gives it the highest likelihood on the pixels that
tell the groups apart (``entropy_coder.ChunkCoder``), so the clusters only seed the maps.

Memory stays O(samples) plus one sum per group: k-means sees at most ``MAX_SAMPLES`` positions (a fixed stride
through the scan); a second pass sums each group's frames (assigning each position to its nearest centre first
where not every one was seen). The fit then holds a few (groups, pixels) float64 arrays: ~0.1 GB per candidate on
a 1024 x 1024 detector with 16 groups.
"""

from __future__ import annotations

import math

import numpy as np

#: Detector cells per axis of the features k-means clusters.
CELLS = 12
#: Group counts tried besides one group: k-means finds the most, merging (Ward) the fewer, so one pass of sums
#: serves them all.
GROUP_COUNTS = (2, 4, 8, 16)
#: Positions k-means sees at most (every ``stride``-th of the scan); up to this many, their features are kept and
#: the second pass only sums frames.
MAX_SAMPLES = 8192
#: Lloyd iterations (it settles in ~10-20 on the cubes tried) and the seed of its k-means++ start.
ITERATIONS = 40
SEED = 0


def features(frames: np.ndarray, det: tuple[int, int]) -> np.ndarray:
    """(positions, cells): the square root of each frame's mean count per detector cell (``CELLS`` per axis),
    summed in integers (exact, so the same everywhere)."""
    cube = np.asarray(frames).reshape(-1, *det)
    rows, cols, area = _cells(det)
    wide = np.uint64 if cube.dtype.itemsize > 2 else np.uint32  # a cell of <= 65536 uint16 counts fits uint32
    # rows first, a slice of detector rows at a time (8x faster than reduceat there), then the 1/CELLS as much left
    ends = np.append(rows[1:], det[0])
    by_rows = np.empty((cube.shape[0], rows.size, det[1]), wide)
    for j, (r0, r1) in enumerate(zip(rows.tolist(), ends.tolist(), strict=True)):
        np.sum(cube[:, r0:r1], axis=1, dtype=wide, out=by_rows[:, j])
    binned = np.add.reduceat(by_rows, cols, axis=2)
    return np.sqrt(binned / area).reshape(cube.shape[0], -1)


def _event_features(positions: np.ndarray, pixels: np.ndarray, counts: np.ndarray, n: int,
                    det: tuple[int, int]) -> np.ndarray:
    """``features`` of ``n`` positions from their events (block-local position, flat pixel, count of each): the
    cells' sums counted per event, the same integers, so the same float64 features."""
    rows, cols, area = _cells(det)
    cell_row = np.searchsorted(rows, np.arange(det[0]), side="right") - 1
    cell_col = np.searchsorted(cols, np.arange(det[1]), side="right") - 1
    cell = (cell_row[:, None] * cols.size + cell_col[None, :]).reshape(-1)
    binned = np.bincount(positions * (rows.size * cols.size) + cell[pixels], weights=counts,
                         minlength=n * rows.size * cols.size).reshape(n, rows.size, cols.size)
    return np.sqrt(binned / area).reshape(n, -1)


def _cells(det: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells' first detector rows and columns, and each cell's pixel count (rows, columns)."""
    rows, cols = _cell_starts(det[0]), _cell_starts(det[1])
    return rows, cols, np.outer(np.diff(np.append(rows, det[0])), np.diff(np.append(cols, det[1])))


def _cell_starts(n: int) -> np.ndarray:
    """First pixel of each of ``CELLS`` near-equal runs of ``n`` detector pixels."""
    return np.unique(np.arange(min(CELLS, n)) * n // min(CELLS, n))


def kmeans(x: np.ndarray, k: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """k centres of the rows of ``x`` and each row's centre (Lloyd from a k-means++ start, fixed seed: the same
    data give the same centres on every run)."""
    rng = np.random.default_rng(seed)
    centres = [x[int(rng.integers(x.shape[0]))]]
    dist = np.sum((x - centres[0]) ** 2, axis=1)
    for _ in range(1, k):
        total = float(dist.sum())
        pick = int(rng.choice(x.shape[0], p=dist / total)) if total > 0 else int(rng.integers(x.shape[0]))
        centres.append(x[pick])
        dist = np.minimum(dist, np.sum((x - x[pick]) ** 2, axis=1))
    c = np.array(centres)
    labels = nearest(x, c)
    for _ in range(ITERATIONS):
        c = _means(x, labels, c)
        new = nearest(x, c)
        if np.array_equal(new, labels):
            break
        labels = new
    return c, labels


def _means(x: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each cluster's mean (its old centre where it is empty), summed in sorted runs (``np.add.at`` is slow)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=centres.shape[0])
    starts = np.cumsum(counts) - counts
    out = centres.copy()
    full = counts > 0
    out[full] = np.add.reduceat(x[order], starts[full], axis=0) / counts[full][:, None]
    return out


def nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centre (ties: the first)."""
    d = np.sum(centres**2, axis=1)[None, :] - 2.0 * (x @ centres.T)
    return np.argmin(d, axis=1)


def ward_merges(centres: np.ndarray, weights: np.ndarray, counts: list[int]) -> dict[int, np.ndarray]:
    """For each of ``counts``: which merged group each centre falls in, merging the pair that adds the least
    within-group sum of squares (Ward) until that many are left."""
    groups = [[i] for i in range(centres.shape[0])]
    c, w = [row for row in centres.astype(np.float64)], [float(v) for v in weights]
    out: dict[int, np.ndarray] = {}
    while True:
        if len(groups) in counts:
            label = np.zeros(centres.shape[0], np.int64)
            for j, members in enumerate(groups):
                label[members] = j
            out[len(groups)] = label
        if len(groups) <= min(counts):
            return out
        best = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                cost = w[a] * w[b] / max(w[a] + w[b], 1e-12) * float(np.sum((c[a] - c[b]) ** 2))
                if best is None or cost < best[0]:
                    best = (cost, a, b)
        assert best is not None
        _, a, b = best
        total = w[a] + w[b]
        c[a] = (c[a] * w[a] + c[b] * w[b]) / total if total > 0 else c[a]
        w[a] = total
        groups[a] += groups[b]
        del groups[b], c[b], w[b]


class ScanGroups:
    """The candidate groupings of one cube's positions, built in two passes over its blocks: ``sample`` every
    block, ``cluster``, then ``add`` every block; ``groupings`` is what ``fit_model`` takes."""

    def __init__(self, n_positions: int, det: tuple[int, int]):
        self.det, self.n_positions = det, n_positions
        self.stride = max(1, math.ceil(n_positions / MAX_SAMPLES))
        self.counts = [k for k in GROUP_COUNTS if 4 * k <= n_positions // self.stride]  # a few positions per group
        self._samples: list[np.ndarray] = []
        self._labels: np.ndarray | None = None  # every position's group, when every position was sampled
        self.centres = np.zeros((0, 0))
        self._sums = np.zeros((max(self.counts, default=0), det[0] * det[1]))
        self._members = np.zeros(self._sums.shape[0])

    @property
    def wanted(self) -> bool:
        """Whether the scan is long enough for any grouping."""
        return bool(self.counts)

    def sample(self, first: int, frames: np.ndarray) -> None:
        """Keep the features of the sampled positions among ``frames`` (positions ``first`` on)."""
        if self.wanted:
            pick = np.arange((-first) % self.stride, frames.shape[0], self.stride)
            self._samples.append(features(frames if self.stride == 1 else frames[pick], self.det))

    def cluster(self) -> None:
        """The centres of the most groups (k-means), and which of them each smaller count merges."""
        x = np.concatenate(self._samples)
        self._samples = []
        self.centres, labels = kmeans(x, max(self.counts))
        if self.stride == 1:
            self._labels = labels
        weights = np.bincount(labels, minlength=self.centres.shape[0])
        self._merged = ward_merges(self.centres, weights, self.counts)

    def add(self, first: int, frames: np.ndarray) -> None:
        """Sum ``frames`` (positions ``first`` on; positions x pixels) into the groups of their nearest centres."""
        if self._labels is not None:
            labels = self._labels[first:first + frames.shape[0]]
        else:
            labels = nearest(features(frames, self.det), self.centres)
        self._members += np.bincount(labels, minlength=self._members.size)
        for g in np.unique(labels).tolist():
            self._sums[g] += frames[labels == g].sum(axis=0, dtype=np.float64)

    def add_events(self, first: int, indptr: np.ndarray, indices: np.ndarray, counts: np.ndarray) -> None:
        """``add`` of the positions ``first`` on given as CSR events (``indptr`` over them, flat pixels, counts):
        the same features and sums (integers, exact in float64), from each event instead of each pixel."""
        n, pixels = int(indptr.size) - 1, self.det[0] * self.det[1]
        positions = np.repeat(np.arange(n, dtype=np.int64), np.diff(np.asarray(indptr, np.int64)))
        indices = np.asarray(indices, np.int64)
        if self._labels is not None:
            labels = self._labels[first:first + n]
        else:
            labels = nearest(_event_features(positions, indices, counts, n, self.det), self.centres)
        self._members += np.bincount(labels, minlength=self._members.size)
        self._sums += np.bincount(labels[positions] * pixels + indices, weights=counts,
                                  minlength=self._sums.size).reshape(self._sums.shape)

    def groupings(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(sums, positions) per candidate count, groups left empty dropped."""
        out = []
        for k in self.counts:
            merge = self._merged[k]
            sums = np.zeros((k, self._sums.shape[1]))
            np.add.at(sums, merge, self._sums)
            members = np.bincount(merge, weights=self._members, minlength=k)
            kept = members > 0
            if np.count_nonzero(kept) > 1:
                out.append((sums[kept], members[kept]))
        return out
