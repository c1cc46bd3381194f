"""Frame accounting and row assembly: frames arrive by detector frame number (in any order, some twice, some
never); the engine wants whole scan rows in order. ``RowAssembler`` places each frame, emits a row once it is
complete or the stream has moved ``window_rows`` past it, and counts every fault instead of hiding it."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import numpy as np

from stempress.data.base import Block


@dataclass
class FrameAccount:
    """Every scan position is received once or reported: ``missing`` includes frames that came ``late`` (after
    their row was handed on) and frames that were ``corrupt``; ``reordered`` frames arrived after a higher
    number but in time; ``ended`` says why the stream stopped."""

    expected: int
    received: int = 0
    duplicate: int = 0
    late: int = 0
    reordered: int = 0
    corrupt: int = 0
    ended: str = "running"

    @property
    def missing(self) -> int:
        return self.expected - self.received

    def as_dict(self) -> dict[str, int | str]:
        return {**asdict(self), "missing": self.missing}

    def summary(self) -> str:
        return (f"frames: expected {self.expected}, received {self.received}, missing {self.missing}, "
                f"duplicate {self.duplicate}, late {self.late}, reordered {self.reordered}, corrupt {self.corrupt}"
                f" ({self.ended})")


#: Scan rows per slab: the default archive chunks' rows (``codecs.chunking``), so the engine joins a slab's rows
#: into chunk rows as a view (``data.stream.join``) instead of copying them.
SLAB_ROWS = 16
#: Slabs kept for reuse once every block over them is gone.
SPARE_SLABS = 2


class RowAssembler:
    """Frames by position index into whole scan rows; missing positions keep ``fill`` and are False in
    ``Block.valid`` (never zeros posing as data).

    Rows are views of slabs of ``slab_rows`` consecutive rows: adjacent rows join without a copy, and a slab no
    block refers to any more is reused, so the frames are not copied into freshly mapped memory (whose first
    touch, page by page, cost more CPU than the copy itself)."""

    def __init__(self, scan_shape: tuple[int, int], det_shape: tuple[int, int], dtype: np.dtype,
                 account: FrameAccount, *, fill: int = 0, window_rows: int = 1, slab_rows: int = SLAB_ROWS) -> None:
        self.scan_y, self.scan_x = scan_shape
        self.det_shape, self.dtype, self.fill = det_shape, np.dtype(dtype), fill
        self.account, self.window = account, max(0, window_rows)
        self.received = np.zeros(self.scan_y * self.scan_x, bool)
        self.rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.slab_rows = max(1, int(slab_rows))
        self._slabs: dict[int, np.ndarray] = {}
        self._spare: list[np.ndarray] = []
        self.next_row = 0
        self.highest = -1
        self.missing_emitted = 0

    @property
    def done(self) -> bool:
        return self.next_row >= self.scan_y

    def add(self, index: int, number: int, frame: np.ndarray) -> list[Block]:
        """Place frame ``index`` (detector number ``number``); returns the rows it lets go."""
        if self.received[index]:
            self.account.duplicate += 1
            return []
        row = index // self.scan_x
        if row < self.next_row:
            self.account.late += 1
            return []
        if index < self.highest:
            self.account.reordered += 1
        self.highest = max(self.highest, index)
        data, ids = self.rows.get(row) or self._new_row(row)
        data[index % self.scan_x] = frame
        ids[index % self.scan_x] = number
        self.received[index] = True
        self.account.received += 1
        return self._ready(self.highest // self.scan_x)

    def add_run(self, start: int, numbers: np.ndarray, frames: np.ndarray) -> list[Block] | None:
        """Place ``len(frames)`` frames of consecutive indices from ``start`` (detector numbers ``numbers``) at
        once, with exactly the accounting of ``add`` one by one; None (nothing done) unless none of them is a
        duplicate or late, the only faults a consecutive run can hold (then ``add`` takes them one by one).

        One by one, frame ``j`` is reordered iff its index is below the highest before the run (the run itself
        only rises), and no row a frame of the run belongs to can be handed on before that frame is placed
        (a row goes once complete, or ``window`` rows behind the highest index, and the run's rows are at or past
        the highest row minus ``window`` that every earlier ``add`` already emitted up to); so one ``_ready`` at the
        end hands on the same rows with the same contents."""
        k = len(frames)
        stop = start + k
        if start // self.scan_x < self.next_row or self.received[start:stop].any():
            return None
        self.account.reordered += max(0, min(k, self.highest - start))
        self.highest = max(self.highest, stop - 1)
        at = start
        while at < stop:
            row, col = divmod(at, self.scan_x)
            n = min(stop - at, self.scan_x - col)
            data, ids = self.rows.get(row) or self._new_row(row)
            data[col:col + n] = frames[at - start:at - start + n]  # byte order and det_y flip in the one copy
            ids[col:col + n] = numbers[at - start:at - start + n]
            at += n
        self.received[start:stop] = True
        self.account.received += k
        return self._ready(self.highest // self.scan_x)

    def _new_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        # not filled here: the frames overwrite it; the positions still empty get the fill value when it goes
        data = self._slab(row // self.slab_rows)[row % self.slab_rows]
        ids = np.full(self.scan_x, -1, np.int64)
        self.rows[row] = (data, ids)
        return data, ids

    def _slab(self, group: int) -> np.ndarray:
        slab = self._slabs.get(group)
        if slab is None:
            rows = min(self.slab_rows, self.scan_y - group * self.slab_rows)
            shape = (rows, self.scan_x, *self.det_shape)
            at = self._unused(shape)
            slab = np.empty(shape, self.dtype) if at is None else self._spare.pop(at)
            self._slabs[group] = slab
        return slab

    def _unused(self, shape: tuple[int, ...]) -> int | None:
        """The index of a spare slab of ``shape`` nothing else refers to: every view of a slab (a block, a sink's
        piece of one) holds a reference to it (numpy's ``base``), so the list's and the call's own references
        alone mean unused."""
        for i in range(len(self._spare)):
            if sys.getrefcount(self._spare[i]) == 2 and self._spare[i].shape == shape:
                return i
        return None

    def _retire(self, row: int) -> None:
        """The slab of ``row`` once its last row is handed on: kept for reuse, no longer written here."""
        group = row // self.slab_rows
        if row + 1 == min(self.scan_y, (group + 1) * self.slab_rows) and group in self._slabs:
            self._spare.append(self._slabs.pop(group))
            del self._spare[:-SPARE_SLABS]

    def _ready(self, head_row: int) -> list[Block]:
        out = []
        while not self.done:
            r = self.next_row
            lo = r * self.scan_x
            complete = bool(self.received[lo:lo + self.scan_x].all())
            if not complete and r + self.window >= head_row:
                break
            out.append(self._emit(r))
        return out

    def _emit(self, r: int) -> Block:
        data, ids = self.rows.pop(r, None) or self._new_row(r)
        self.rows.pop(r, None)
        lo = r * self.scan_x
        valid = self.received[lo:lo + self.scan_x].copy()
        self.missing_emitted += int(valid.size - valid.sum())
        if not valid.all():
            data[~valid] = self.fill
        self.next_row = r + 1
        self._retire(r)
        return Block(r, data[None], None if valid.all() else valid[None], ids[None])

    def flush(self) -> list[Block]:
        """Every row not yet handed on, with what arrived (the stream ended)."""
        out = []
        while not self.done:
            out.append(self._emit(self.next_row))
        return out
