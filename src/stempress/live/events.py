"""What a protocol reader hands the receiver: a decoded frame (or a batch of them), a message that could not be one,
or the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """A decoded frame and the detector's frame number for it (``data`` may be a view of the message in the
    detector's byte order: the values count, the row assembler copies them into native rows)."""

    number: int
    data: np.ndarray


@dataclass(frozen=True)
class Frames:
    """Consecutive frames that arrived together, handed on as one event (a reader cuts many from one receive,
    so the receiver's per-event work is paid once per batch, not per frame): ``numbers[i]`` is the detector's
    number of ``data[i]`` (``(n, det_y, det_x)``, possibly a view in the detector's byte order, as ``Frame``)."""

    numbers: np.ndarray
    data: np.ndarray

    def __len__(self) -> int:
        return len(self.numbers)

    def frames(self) -> Iterator[Frame]:
        """One ``Frame`` each, in order (for a consumer that takes them one at a time)."""
        for number, data in zip(self.numbers.tolist(), self.data, strict=True):
            yield Frame(number, data)


@dataclass(frozen=True)
class Corrupt:
    """A message that was not a valid frame (bad header, wrong length); its position stays missing."""

    reason: str


@dataclass(frozen=True)
class End:
    """The stream stopped: ``reason`` in words (series end, connection closed, timed out)."""

    reason: str


Event = Frame | Frames | Corrupt | End


@dataclass(frozen=True)
class StreamHeader:
    """What a reader learns before the first frame: the frame shape and dtype, the first frame number the
    detector uses (Merlin counts from 1, DECTRIS from 0) and the header's own fields for provenance."""

    det_shape: tuple[int, int]
    dtype: np.dtype
    first_number: int
    metadata: dict


class Buffers:
    """Memory a reader decodes frames into: new arrays of the heap here; in the receiving process, its shared ring
    (``ring.RingBuffers``), so a frame is written once, where the receiver's parent reads it."""

    #: whether a buffer nothing here refers to any more may be filled again (not the ring's: the parent may still
    #: be reading it)
    reusable = True

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A new buffer (its contents undefined)."""
        return np.empty(shape, dtype)


class EventReader:
    """What the protocol readers share: ``start`` reads ahead to the first frame (kept in ``_pending``), then
    ``events`` hands those on and reads until the stream's end or ``stop``; frames are decoded into ``buffers``."""

    _pending: list[Event]
    _stop: threading.Event
    buffers: Buffers = Buffers()
    #: whether the stream ends with a message of its own (DECTRIS) or stays open (Merlin's data port)
    ends_with_message: bool

    def _next(self) -> Event:
        raise NotImplementedError

    def events(self, stop: threading.Event) -> Iterator[Event]:
        """Frames, corrupt messages and the end, in arrival order."""
        self._stop = stop
        yield from self._pending
        self._pending = []
        while not stop.is_set():
            event = self._next()
            yield event
            if isinstance(event, End):
                return
