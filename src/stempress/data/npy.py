"""``.npy`` source: a memory-mapped array, so a cube larger than RAM still flows in blocks of scan rows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from stempress.data.base import SourceBase, check_shape_dtype, checked_scan_shape, require_file
from stempress.errors import StempressError


class NpySource(SourceBase):
    """A 4-D ``.npy`` file (or a 3-D frame stack with ``scan_shape``), opened with ``mmap_mode="r"``."""

    def __init__(self, path: str | Path, scan_shape: tuple[int, int] | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        require_file(self.path)
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            reason = " ".join(str(exc).split())
            raise StempressError(
                f"{self.path}: not a readable .npy file ({reason}); "
                "the file is truncated or not numpy.save output"
            ) from exc
        if not isinstance(array, np.ndarray):  # an .npz archive renamed .npy
            raise StempressError(
                f"{self.path}: is an .npz archive, not an .npy array; save the cube with numpy.save"
            )
        frame_stack = array.ndim == 3 and scan_shape is not None
        if frame_stack:
            sy, sx = checked_scan_shape(scan_shape, array.shape[0], str(self.path))  # type: ignore[arg-type]
        shape = (sy, sx, *array.shape[1:]) if frame_stack else array.shape
        dtype = array.dtype.newbyteorder("=") if array.dtype.kind in "iuf" else array.dtype
        self.shape = check_shape_dtype(shape, dtype, str(self.path))
        if scan_shape is not None and tuple(int(v) for v in scan_shape) != self.shape[:2]:
            raise StempressError(
                f"{self.path}: --scan-shape {tuple(scan_shape)} does not match the array's scan shape "
                f"{self.shape[:2]}; drop --scan-shape"
            )
        self.dtype = np.dtype(dtype)
        self._array: np.ndarray | None = array
        # rows of a C-ordered, native-order file are read with pread into the block: a fresh map in every worker
        # that reopens the file would fault each page in again (scale_out.py's page faults per GB show it)
        self._offset = int(array.offset) if (isinstance(array, np.memmap) and array.flags.c_contiguous
                                             and array.dtype == self.dtype) else None
        self.metadata: dict[str, Any] = {"format": "npy", "file": str(self.path),
                                         "fortran_order": bool(array.flags.f_contiguous and array.ndim > 1
                                                               and not array.flags.c_contiguous)}
        if frame_stack:
            self.metadata["frame_stack"] = True

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows ``[start, stop)`` copied out of the map, C-ordered and in native byte order."""
        start, stop = self.check_rows(start, stop)
        if self._array is None:
            raise StempressError(f"{self.path}: source is closed; open it again")
        if self._offset is not None:
            return self._pread(start, stop)
        if self._array.ndim == 3:  # frame stack: rows map to frames (a reshape could copy an F-order file)
            scan_x = self.shape[1]
            frames = np.array(self._array[start * scan_x : stop * scan_x], dtype=self.dtype, order="C")
            return frames.reshape(stop - start, *self.shape[1:])
        return np.array(self._array[start:stop], dtype=self.dtype, order="C")

    def _pread(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        row_bytes = out.nbytes // max(1, stop - start)
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        with open(self.path, "rb", buffering=0) as f:
            while done < out.nbytes:
                got = os.preadv(f.fileno(), [view[done:]], self._offset + start * row_bytes + done)  # type: ignore[operator]
                if got == 0:
                    raise StempressError(f"{self.path}: ends inside scan row {start + done // row_bytes}; the file "
                                         "is truncated, copy it again")
                done += got
        return out

    def close(self) -> None:
        """Drop the memory map."""
        self._array = None

    def __reduce__(self) -> tuple[Any, ...]:
        # A memmap would pickle as its whole contents; a worker reopens the file instead.
        return (type(self), (self.path, self.shape[:2] if self.metadata.get("frame_stack") else None))

    def __repr__(self) -> str:
        return f"NpySource({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"
