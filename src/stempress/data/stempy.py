"""stempy's electron-event HDF5 layout (version 3), read block by block of scan rows (``events.stempy`` writes it).

The layout, as stempy 3.x's ``SparseArray.write_to_hdf5`` / ``from_hdf5`` define it:

- file attr ``version = 3``;
- ``electron_events/frames``: 1-D vlen uint32, ``positions * frames_per_position`` entries, position-major
  (entry ``p * K + j`` is frame ``j`` at scan position ``p``, positions row-major); each entry lists the
  flat detector indices (``row * det_x + col``) that saw an electron in that frame;
- ``frames.attrs Nx, Ny`` = ``frame_shape[0], frame_shape[1]`` (det_y, det_x). stempy reads them back as
  ``frame_shape = (Nx, Ny)`` unreversed, so this order is what makes non-square frames come back upright;
  stempy's own detectors are square, where "width, height" and this order agree;
- ``electron_events/scan_positions``: int64 ``0 .. positions-1``, attrs ``Nx`` = scan width (scan_x),
  ``Ny`` = scan height (scan_y); stempy reverses these into ``scan_shape = (Ny, Nx)``.

Why several frames per position: stempy expands a frame with ``dp[entry] += 1``, which counts a pixel
listed twice in one entry once. A count of k is therefore written as the pixel in frames 0..k-1 of its
position, so ``frames_per_position`` is the cube's largest count (at least 1), and the pixel still
appears k times at its position. Every electron costs 4 bytes, so this layout suits counted data
(counts of a few); high-count cubes are refused unless ``frames_per_position`` is given explicitly.
The reader also accepts repeats inside one entry (version 1/2 files, other writers) and sums them.

vlen data live in HDF5's global heap, where filters do not apply, so ``frames`` is stored uncompressed,
as stempy does. Our source dtype is kept under ``metadata/stempress`` (stempy loads that group into
``SparseArray.metadata``), so a round trip gives back the same dtype, with the record of ``data.record``
(calibration, provenance, counting) in its sub-groups.

Checksums (``data.event_checksums``): a CRC of each chunk's entry ``lengths`` (``<i8``) and pixel ``indices`` (``<u4``),
as attributes of ``stempress/checksums/electron_events/frames`` (the HDF5 path's checksum group, which stempy never
opens). Every read checks the chunks it touches; files without them read as before (``metadata["checksums"]``
is ``none``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.base import SourceBase, check_shape_dtype
from stempress.data.checksums import checksum_group_path
from stempress.data.event_checksums import ChunkGuard, EventChecksums, Parts
from stempress.data.events import INDEX_DTYPE, EventBlock, check_counts_dtype, dense_from_events, events_from_hits
from stempress.data.hdf5 import as_python, open_hdf5
from stempress.data.record import read_h5_record
from stempress.errors import StempressError

STEMPY_VERSION = 3
GROUP = "electron_events"
FRAMES = f"{GROUP}/frames"
SCAN_POSITIONS = f"{GROUP}/scan_positions"
#: Our own attributes, inside the group stempy loads as ``SparseArray.metadata``.
METADATA = "metadata/stempress"
#: stempy's expansion dtype, used for files that do not say which dtype they came from.
DEFAULT_DTYPE = np.dtype(np.uint32)
#: Where the checksums of ``frames`` live, and the byte parts they cover.
CHECKSUMS = checksum_group_path(FRAMES)
PARTS = ("lengths", "indices")


def entry_parts(entries: np.ndarray) -> Parts:
    """The bytes a chunk's checksums cover: each entry's length, and every pixel index, as stored."""
    lengths = np.fromiter((e.size for e in entries), dtype="<i8", count=len(entries))
    indices = np.concatenate(entries).astype("<u4", copy=False) if lengths.sum() else np.zeros(0, "<u4")
    return {"lengths": lengths, "indices": indices}


def _attr_int(obj: h5py.HLObject, key: str, path: Path) -> int:
    if key not in obj.attrs:
        raise StempressError(f"{path}: {obj.name} has no attribute {key!r}; not a stempy electron-event file, "
                             "or one written without its scan/frame shape")
    return int(as_python(obj.attrs[key]))


class StempySource(SourceBase):
    """A stempy electron-event file as a ``Dataset4D``; reads only the requested rows' entries.

    ``dtype`` is what dense reads give: the writer's if it left one (stempress does), else uint32 as stempy.
    """

    def __init__(self, path: str | Path, *, dtype: np.dtype | str | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self._file: h5py.File | None = open_hdf5(self.path)
        try:
            self._open(dtype)
        except BaseException:
            self.close()
            raise

    def _open(self, dtype: np.dtype | str | None) -> None:
        f = self._file
        assert f is not None
        if FRAMES not in f or SCAN_POSITIONS not in f:
            raise StempressError(f"{self.path}: not a stempy electron-event file (no {FRAMES} and {SCAN_POSITIONS}); "
                                 "open it as a dense HDF5 cube instead")
        frames = f[FRAMES]
        base = h5py.check_vlen_dtype(frames.dtype)
        if frames.ndim != 1 or base is None or np.dtype(base).kind not in "ui":
            raise StempressError(f"{self.path}: {FRAMES} is {frames.dtype} {frames.shape}, not a 1-D vlen integer "
                                 "dataset; the file is not stempy's layout")
        self.version = int(as_python(f.attrs.get("version", 1)))
        scan = f[SCAN_POSITIONS]
        scan_shape = (_attr_int(scan, "Ny", self.path), _attr_int(scan, "Nx", self.path))
        frame_shape = (_attr_int(frames, "Nx", self.path), _attr_int(frames, "Ny", self.path))
        n = scan_shape[0] * scan_shape[1]
        if n <= 0 or frames.shape[0] % n:
            raise StempressError(f"{self.path}: {frames.shape[0]} frames do not divide into {scan_shape[0]}x"
                                 f"{scan_shape[1]} scan positions; the file is truncated or its scan shape is wrong")
        self.frames_per_position = frames.shape[0] // n
        if self.version < STEMPY_VERSION and self.frames_per_position != 1:
            raise StempressError(f"{self.path}: stempy version {self.version} file with extra frames is not "
                                 "supported; load and save it with stempy 3 (SparseArray.from_hdf5, write_to_hdf5)")
        ours = dict(f[METADATA].attrs) if METADATA in f else {}
        chosen = dtype if dtype is not None else as_python(ours.get("dtype", DEFAULT_DTYPE.name))
        try:
            self.dtype = np.dtype(chosen)
        except TypeError as exc:
            raise StempressError(f"{self.path}: dtype {chosen!r} is not a numpy dtype; give e.g. uint16") from exc
        check_counts_dtype(self.dtype, str(self.path))
        self.shape = check_shape_dtype((*scan_shape, *frame_shape), self.dtype, str(self.path))
        self._frames = frames
        stored = f.get(CHECKSUMS)
        sums = None if stored is None else EventChecksums.from_dict(
            {k: as_python(v) for k, v in stored.attrs.items()}, n, PARTS, str(self.path))
        self.guard = ChunkGuard(sums, self._parts, str(self.path), scan_shape[1])
        self.metadata: dict[str, Any] = {
            "format": "stempy", "file": str(self.path), "stempy_version": self.version,
            "frames_per_position": self.frames_per_position, "checksums": self.guard.state,
            **{f"stempress_{k}": as_python(v) for k, v in ours.items()}, **read_h5_record(f),
        }

    def _parts(self, first: int, end: int) -> Parts:
        """The checksummed bytes of scan positions ``[first, end)``, read from the file."""
        k = self.frames_per_position
        return entry_parts(self._frames[first * k:end * k])

    def read_events(self, start: int, stop: int) -> EventBlock:
        """Scan rows ``[start, stop)`` as events: the positions' entries read and summed per pixel."""
        start, stop = self.check_rows(start, stop)
        if self._file is None:
            raise StempressError(f"{self.path}: source is closed; open it again")
        scan_x, k = self.shape[1], self.frames_per_position
        entries = self._checked_entries(start * scan_x, stop * scan_x)
        lengths = np.fromiter((e.size for e in entries), dtype=np.int64, count=len(entries))
        pixels = np.concatenate(entries) if lengths.sum() else np.zeros(0, INDEX_DTYPE)
        per_position = lengths.reshape(-1, k).sum(axis=1)
        positions = np.repeat(np.arange(per_position.size, dtype=np.int64), per_position)
        return events_from_hits(start, (stop - start, *self.shape[1:]), self.dtype, positions, pixels,
                                where=str(self.path))

    def _checked_entries(self, first: int, end: int) -> np.ndarray:
        """The entries of positions ``[first, end)``, after checking every chunk they touch: entries read once,
        widened to whole chunks only for chunks not checked yet."""
        k, pending = self.frames_per_position, self.guard.pending(first, end)
        if not pending:
            return self._frames[first * k:end * k]
        assert self.guard.checksums is not None
        a = min(first, self.guard.checksums.positions(pending[0])[0])
        b = max(end, self.guard.checksums.positions(pending[-1])[1])
        entries = self._frames[a * k:b * k]
        self.guard.ensure(first, end, lambda p, q: entry_parts(entries[(p - a) * k:(q - a) * k]))
        return entries[(first - a) * k:(end - a) * k]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return dense_from_events(self.read_events(start, stop))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
