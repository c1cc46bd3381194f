"""Groups of scan positions for the entropy model: where the beam is changes the pattern, so one mean pattern fits
no position well.

Why: on a cube whose contrast varies with scan position (grains, thickness) each pixel's count follows the
pattern of its position, not the cube's mean; coding it against the mean costs the gap between the mean-pattern
Poisson bound and the true one, and the mixture's overdispersion on top. Positions are clustered (k-means, fixed
seed, on the square root of each frame binned into ``CELLS`` x ``CELLS`` cells: close to Poisson deviance, and
cheap) and each group gets a class map of its own; ``entropy_model.fit_model`` weighs each candidate count
(``GROUP_COUNTS``) against the single pattern, so a cube that does not vary keeps one group. The coder then puts
each position in the group whose map codes it shortest (``entropy._Coder``), so the clusters only seed the maps.

Memory stays O(samples): k-means sees at most ``MAX_SAMPLES`` positions (a fixed stride through the scan); a second
pass assigns every position to its nearest centre and sums the groups' frames.
"""

from __future__ import annotations

import math

import numpy as np

#: Detector cells per axis of the features k-means clusters.
CELLS = 12
#: Group counts tried besides one group.
GROUP_COUNTS = (2, 4, 8, 16)
#: Positions k-means sees at most (every ``stride``-th of the scan).
MAX_SAMPLES = 8192
#: Lloyd iterations (it settles in ~10-20 on the cubes tried) and the seed of its k-means++ start.
ITERATIONS = 40
SEED = 0


#: Positions binned per matrix product (keeps the float64 copy of a block small).
_BIN_POSITIONS = 64


def features(frames: np.ndarray, det: tuple[int, int]) -> np.ndarray:
    """(positions, cells): the square root of each frame's mean count per detector cell (``CELLS`` per axis).
    The binning is two matrix products on exact integers in float64, so any BLAS gives the same sums."""
    cube = np.asarray(frames).reshape(-1, *det)
    rows, cols = _binning(det[0]), _binning(det[1])
    area = np.outer(rows.sum(axis=0), cols.sum(axis=0))
    out = np.empty((cube.shape[0], area.size))
    for a in range(0, cube.shape[0], _BIN_POSITIONS):
        part = cube[a:a + _BIN_POSITIONS].astype(np.float64)
        binned = np.matmul(rows.T, part @ cols)  # (n, cells_y, cells_x)
        out[a:a + part.shape[0]] = (binned / area).reshape(part.shape[0], -1)
    return np.sqrt(out)


def _binning(n: int) -> np.ndarray:
    """(n, cells) 0/1: which cell each of ``n`` detector pixels falls in (``CELLS`` near-equal runs)."""
    cells = min(CELLS, n)
    cell = np.arange(n) * cells // n
    return (cell[:, None] == np.arange(cells)[None, :]).astype(np.float64)


def kmeans(x: np.ndarray, k: int, seed: int = SEED) -> np.ndarray:
    """k centres of the rows of ``x`` (Lloyd from a k-means++ start, fixed seed: the same data give the same
    centres on every run)."""
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
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(c)
        np.add.at(sums, labels, x)
        c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        new = nearest(x, c)
        if np.array_equal(new, labels):
            break
        labels = new
    return c


def nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centre (ties: the first)."""
    d = np.sum(centres**2, axis=1)[None, :] - 2.0 * (x @ centres.T)
    return np.argmin(d, axis=1)


class ScanGroups:
    """The candidate groupings of one cube's positions, built in two passes over its blocks: ``sample`` every
    block, ``cluster``, then ``add`` every block; ``groupings`` is what ``fit_model`` takes."""

    def __init__(self, n_positions: int, det: tuple[int, int]):
        self.det, self.n_positions = det, n_positions
        self.stride = max(1, math.ceil(n_positions / MAX_SAMPLES))
        self.counts = [k for k in GROUP_COUNTS if 4 * k <= n_positions // self.stride]  # a few positions per group
        self._samples: list[np.ndarray] = []
        self.centres: list[np.ndarray] = []
        self._sums = [np.zeros((k, det[0] * det[1])) for k in self.counts]
        self._members = [np.zeros(k) for k in self.counts]

    @property
    def wanted(self) -> bool:
        """Whether the scan is long enough for any grouping."""
        return bool(self.counts)

    def sample(self, first: int, frames: np.ndarray) -> None:
        """Keep the features of the sampled positions among ``frames`` (positions ``first`` on)."""
        if self.wanted:
            pick = np.arange((-first) % self.stride, frames.shape[0], self.stride)
            self._samples.append(features(frames[pick], self.det))

    def cluster(self) -> None:
        x = np.concatenate(self._samples) if self._samples else np.zeros((0, CELLS * CELLS))
        self._samples = []
        self.centres = [kmeans(x, k) for k in self.counts]

    def add(self, frames: np.ndarray) -> None:
        """Sum ``frames`` (positions, pixels) into the groups of their nearest centres, for every group count."""
        f = features(frames, self.det)
        for centres, sums, members in zip(self.centres, self._sums, self._members, strict=True):
            labels = nearest(f, centres)
            members += np.bincount(labels, minlength=members.size)
            for g in np.unique(labels).tolist():
                sums[g] += frames[labels == g].sum(axis=0, dtype=np.float64)

    def groupings(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(sums, positions) per candidate, groups left empty dropped."""
        out = []
        for sums, members in zip(self._sums, self._members, strict=True):
            kept = members > 0
            if np.count_nonzero(kept) > 1:
                out.append((sums[kept], members[kept]))
        return out

