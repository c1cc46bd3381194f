"""stempy's electron-event HDF5 layout (version 3), written block by block of scan rows: the layout, its
checksums and its reader are ``data.stempy``'s.

Why several frames per position: stempy expands a frame with ``dp[entry] += 1``, which counts a pixel listed twice
in one entry once, so a count of k is written as the pixel in frames 0..k-1 of its position (``data.stempy``).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from stempress.atomic import atomic_output
from stempress.data.base import Dataset4D, rows_for_budget
from stempress.data.event_checksums import EventChecksums, positions_per_chunk
from stempress.data.events import (
    INDEX_DTYPE,
    EventBlock,
    Events,
    EventsSource,
    as_source,
    check_counts_dtype,
    iter_events,
)
from stempress.data.record import Record, write_h5_record
from stempress.data.stempy import CHECKSUMS, GROUP, METADATA, PARTS, STEMPY_VERSION, entry_parts
from stempress.errors import StempressError
from stempress.events.record import event_record

#: Largest count written without asking: beyond it each position needs that many (mostly empty) frames.
MAX_AUTO_FRAMES_PER_POSITION = 255


def _largest_count(source: Dataset4D, rows: int | None) -> int:
    """The cube's largest count: known for in-memory events, else one pass over the source."""
    if isinstance(source, EventsSource):
        return source.max_count
    return max((block.max_count for block in iter_events(source, rows)), default=0)


def _frames_per_position(source: Dataset4D, rows: int | None, requested: int | None) -> int:
    if requested is not None:
        if int(requested) < 1:
            raise StempressError(f"frames_per_position must be >= 1, got {requested}; give the largest count")
        return int(requested)
    largest = _largest_count(source, rows)
    if largest > MAX_AUTO_FRAMES_PER_POSITION:
        raise StempressError(
            f"{source.name}: counts up to {largest} need {largest} stempy frames per scan position (stempy "
            "stores one index per electron); write raw_csr (write_raw_csr) or HDF5 instead, or pass "
            "frames_per_position to force it"
        )
    return max(1, largest)


def _entries(block: EventBlock, frames_per_position: int, where: str) -> np.ndarray:
    """One vlen entry per (position, frame): frame j lists the pixels counted more than j times."""
    if block.max_count > frames_per_position:
        raise StempressError(
            f"{where}: scan rows {block.start}-{block.stop - 1} hold a count of {block.max_count} but "
            f"frames_per_position is {frames_per_position}; give at least {block.max_count} or leave it unset"
        )
    k = frames_per_position
    entries = np.empty(block.n_positions * k, dtype=object)
    positions = block.positions()
    empty = np.zeros(0, INDEX_DTYPE)
    for j in range(k):
        hit = block.counts > j
        bounds = np.searchsorted(positions[hit], np.arange(block.n_positions + 1))
        pixels = block.indices[hit]
        for p in range(block.n_positions):
            lo, hi = bounds[p], bounds[p + 1]
            entries[p * k + j] = pixels[lo:hi] if hi > lo else empty
    return entries


def _put(frames: h5py.Dataset, first: int, entries: np.ndarray) -> None:
    """Write vlen entries through the low-level API: h5py's ``frames[a:b] = entries`` turns a block whose
    entries happen to share one length (all empty, say) into a 2-D array and refuses it."""
    if entries.size == 0:
        return
    file_space = frames.id.get_space()
    file_space.select_hyperslab((first,), (entries.size,))
    frames.id.write(h5py.h5s.create_simple((entries.size,)), file_space, entries)


def write_stempy(source: Dataset4D | Events, out: str | Path, *, force: bool = False,
                 rows: int | None = None, frames_per_position: int | None = None,
                 record: Record | None = None) -> Path:
    """Write a counted cube (or its events) as a stempy version-3 file, ``rows`` scan rows at a time.

    The file appears whole or not at all. Without ``frames_per_position`` a dense source is read
    twice: once for its largest count (stempy needs the same number of frames at every position).
    ``record`` (default: the source's calibration and provenance) goes under ``metadata/stempress``.
    """
    src = as_source(source)
    check_counts_dtype(src.dtype, src.name)
    out = Path(out)
    with atomic_output(out, force=force) as tmp:  # refuses an existing file before the counting pass
        k = _frames_per_position(src, rows, frames_per_position)
        with h5py.File(tmp, "w") as f:
            _write(f, src, rows, k)
            write_h5_record(f, event_record(src, "stempy") if record is None else record)
    return out


def _write(f: h5py.File, src: Dataset4D, rows: int | None, k: int) -> None:
    """The layout of the module docstring, filled one block of scan rows at a time (whole checksum chunks)."""
    scan_y, scan_x, det_y, det_x = src.shape
    n = scan_y * scan_x
    per_chunk = positions_per_chunk(src.shape)
    chunk_rows = per_chunk // scan_x
    rows = -(-(rows or rows_for_budget(src)) // chunk_rows) * chunk_rows  # each block holds whole chunks
    sums = EventChecksums.empty(n, per_chunk, PARTS)
    f.attrs["version"] = STEMPY_VERSION
    group = f.create_group(GROUP)
    scan_positions = group.create_dataset("scan_positions", shape=(n,), dtype=np.int64)
    scan_positions.attrs["Nx"] = scan_x
    scan_positions.attrs["Ny"] = scan_y
    frames = group.create_dataset("frames", shape=(n * k,), dtype=h5py.vlen_dtype(INDEX_DTYPE))
    frames.attrs["Nx"] = det_y  # stempy's frame_shape[0]: see the module docstring
    frames.attrs["Ny"] = det_x
    for block in iter_events(src, rows):
        first, last = block.start * scan_x, block.stop * scan_x
        scan_positions[first:last] = np.arange(first, last, dtype=np.int64)
        entries = _entries(block, k, src.name)
        _put(frames, first * k, entries)
        for chunk in sums.chunks(first, last):
            a, b = sums.positions(chunk)
            sums.record(chunk, entry_parts(entries[(a - first) * k:(b - first) * k]))
    f.require_group(CHECKSUMS).attrs.update(sums.to_dict())
    ours = f.require_group(METADATA)
    ours.attrs["dtype"] = str(src.dtype)
    ours.attrs["source"] = str(src.name)
    ours.attrs["frames_per_position"] = k
