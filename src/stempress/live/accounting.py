"""Frame accounting and row assembly: frames arrive by detector frame number (in any order, some twice, some
never); the engine wants whole scan rows in order. ``RowAssembler`` places each frame, emits a row once it is
complete or the stream has moved ``window_rows`` past it, and counts every fault instead of hiding it."""

from __future__ import annotations

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


class RowAssembler:
    """Frames by position index into whole scan rows; missing positions keep ``fill`` and are False in
    ``Block.valid`` (never zeros posing as data)."""

    def __init__(self, scan_shape: tuple[int, int], det_shape: tuple[int, int], dtype: np.dtype,
                 account: FrameAccount, *, fill: int = 0, window_rows: int = 1) -> None:
        self.scan_y, self.scan_x = scan_shape
        self.det_shape, self.dtype, self.fill = det_shape, np.dtype(dtype), fill
        self.account, self.window = account, max(0, window_rows)
        self.received = np.zeros(self.scan_y * self.scan_x, bool)
        self.rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
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

    def _new_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        # not filled here: the frames overwrite it; the positions still empty get the fill value when it goes
        data = np.empty((self.scan_x, *self.det_shape), self.dtype)
        ids = np.full(self.scan_x, -1, np.int64)
        self.rows[row] = (data, ids)
        return data, ids

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
        data, ids = self.rows.pop(r, None) or self._new_row_detached()
        lo = r * self.scan_x
        valid = self.received[lo:lo + self.scan_x].copy()
        self.missing_emitted += int(valid.size - valid.sum())
        if not valid.all():
            data[~valid] = self.fill
        self.next_row = r + 1
        return Block(r, data[None], None if valid.all() else valid[None], ids[None])

    def _new_row_detached(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.full((self.scan_x, *self.det_shape), self.fill, self.dtype), np.full(self.scan_x, -1, np.int64))

    def flush(self) -> list[Block]:
        """Every row not yet handed on, with what arrived (the stream ended)."""
        out = []
        while not self.done:
            out.append(self._emit(self.next_row))
        return out
