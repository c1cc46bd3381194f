"""A small, representative piece of a big cube, so a recommendation takes seconds instead of hours.

The first rows of a scan are often vacuum, a flyback or a drift-free start, so the sample is several runs of
whole scan rows spread from the first row to the last. Each run is as tall as the largest chunking's scan_y
(32), so the benchmark's chunks never straddle two runs and chunk shapes mean what they mean on the cube.
"""

from __future__ import annotations

import numpy as np

from stempress.codecs.chunking import PAPER_CHUNKINGS
from stempress.data.base import ArraySource, Dataset4D, nbytes, row_nbytes
from stempress.errors import StempressError

#: Rows per run: the tallest chunk of the study's chunkings (real_space, 32 scan rows).
RUN_ROWS = max(c[0] for c in PAPER_CHUNKINGS.values())


def sample_runs(scan_y: int, budget_rows: int, run_rows: int = RUN_ROWS) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges: k evenly spaced, non-overlapping runs, the first at row 0 and the last
    ending at the last row; one run in the middle when only one fits."""
    if budget_rows >= scan_y:
        return [(0, scan_y)]
    length = max(1, min(run_rows, budget_rows))
    k = max(1, budget_rows // length)
    if k == 1:
        start = (scan_y - length) // 2
        return [(start, start + length)]
    # floor keeps the spacing >= length because (scan_y - length) / (k - 1) >= length when k * length <= scan_y
    starts = [i * (scan_y - length) // (k - 1) for i in range(k)]
    return [(s, s + length) for s in starts]


def spread_sample(source: Dataset4D, max_bytes: int) -> ArraySource:
    """At most ``max_bytes`` of whole scan rows spread over the cube (the whole cube when it fits; at least one
    row when a single row is larger), in memory, with the same name and the rows noted in its metadata."""
    if max_bytes <= 0:
        raise StempressError(f"sample size must be positive, got {max_bytes} bytes; give e.g. 256 MiB")
    scan_y = source.shape[0]
    runs = sample_runs(scan_y, max_bytes // row_nbytes(source))
    rows = sum(stop - start for start, stop in runs)
    cube = np.empty((rows, *source.shape[1:]), dtype=source.dtype)
    at = 0
    for start, stop in runs:
        cube[at:at + stop - start] = source.read_rows(start, stop)
        at += stop - start
    whole = runs == [(0, scan_y)]
    note = {
        "rows": [[int(a), int(b)] for a, b in runs],
        "scan_rows": int(rows),
        "of_scan_rows": int(scan_y),
        "fraction": rows / scan_y,
        "source_bytes": int(nbytes(source)),
        "description": "the whole cube" if whole else
        f"{len(runs)} runs of whole scan rows [start, stop) spread from the first row to the last",
    }
    return ArraySource(cube, name=source.name, metadata=dict(source.metadata) | {"sample": note})
