"""Partial results while a live scan fills: a ``Snapshot`` (the reducers' images so far, the received mask, the
frame accounting) taken by ``SnapshotSink`` at most every ``every`` seconds, on the engine's thread between
blocks, and handed to a callback (the preview writer's queue, ``live_scan``'s generator). Taking one copies a
few scan-sized images; drawing or plotting them happens elsewhere, never on the receive path."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stempress.data.base import Block
from stempress.reduce.engine import Results
from stempress.sinks.protocol import RunInfo
from stempress.sinks.reduce import ReducerSink


@dataclass(frozen=True, eq=False)  # arrays inside: compare the fields, not the snapshots
class Snapshot:
    """The scan so far. ``images``: ``{reducer: {output: array}}``; per-position outputs cover the whole scan,
    NaN where the frame is missing or not reduced yet (the mean pattern: over the frames received so far).
    ``received``: True where the frame has arrived. ``rows_done``: scan rows through the reducers. ``frames``:
    the accounting (expected, received, missing, duplicate, ...). ``final``: the scan is over (then ``images``
    are the finished results)."""

    images: Results
    received: np.ndarray
    rows_done: int
    frames: dict[str, Any]
    seconds: float
    final: bool = False
    status: str = ""

    def image(self, name: str) -> np.ndarray:
        """One image by output name (``"BF"``, ``"com_x"``, ``"mean"``) or ``"reducer/output"``."""
        for reducer, outputs in self.images.items():
            for key, array in outputs.items():
                if name in (key, f"{reducer}/{key}"):
                    return array
        known = [f"{r}/{k}" for r, outputs in self.images.items() for k in outputs]
        raise KeyError(f"{name!r} is not among the snapshot's images {known}")


class SnapshotSink:
    """A sink that reduces nothing itself: every ``every`` seconds (and once at the end) it takes a ``Snapshot`` of
    ``reducers`` (a ``ReducerSink`` of the same pass) and ``source`` (a ``LiveSource``: received mask, accounting)
    and calls ``watch`` with it. Not mergeable: it runs between blocks on the engine's thread, where the reducer
    sink's partial results are merged, so what it copies is consistent."""

    name = "snapshots"

    def __init__(self, reducers: ReducerSink | None, source: Any, watch: Callable[[Snapshot], None], *,
                 every: float = 1.0) -> None:
        self.reducers, self.source, self.watch, self.every = reducers, source, watch, float(every)
        self.started = time.monotonic()
        self._last = -float("inf")
        self.taken = 0

    def open(self, info: RunInfo) -> None:
        self.info = info
        self.started = time.monotonic()

    def consume(self, block: Block) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.watch(self.take())

    def take(self, results: Results | None = None, final: bool = False) -> Snapshot:
        """The scan now (``results``: the finished ones, at the end)."""
        if results is not None:
            images: Results = {name: dict(outputs) for name, outputs in results.items()}
        else:
            images = self.reducers.snapshot() if self.reducers is not None else {}
        rows_done = self.info.shape[0] if final else (self.reducers.rows_reduced if self.reducers is not None else 0)
        self.taken += 1
        return Snapshot(images, self.source.received_mask.copy(), rows_done, self.source.account.as_dict(),
                        time.monotonic() - self.started, final, self.source.status())

    def finish(self) -> None:
        """The last snapshot: the finished results (the reducer sink finished before this one, in sink order)."""
        self.watch(self.take(self.reducers.results if self.reducers is not None else None, final=True))
