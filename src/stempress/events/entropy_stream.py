"""The entropy-coded event file written while a live stream is received: the model is fitted on the scan's first
rows, and from then on each chunk of rows is coded as soon as its rows are in, so the end of the scan leaves only
the last chunk and the file's index to write.

Why: the whole-scan model (``events.entropy_file.ModelFit``) can only code once the scan has ended, ~80 us of CPU
per frame that a stream pays after its last frame, growing with the scan (issue #14). The format stores its model,
and every count stays codable under any model (escapes), so a model from a prefix reads back with the same reader
and ``stempress verify``: the one-pass file codec (``data.entropy.encode_blocks`` without a model) fits its model
the same way, on its first block, one group. The counts are exact either way; only the ratio depends on the model.
Files at rest keep the whole-scan model (``stempress count`` / ``ingest`` outputs are unchanged).

Where the chunks are coded. constriction holds the GIL (~50 us of CPU per 96x96 frame), and a live process is
GIL-bound before it is CPU-bound (the receiver, the reducers and the coder take turns on one core while others
idle), so a worker thread gains nothing (its hand-offs even cost: ~160 against ~180 us of process CPU per frame).
Given worker processes (``executor``: ``stempress.exec.ProcessExecutor``), each chunk is copied into a slot of
``data.entropy_parallel.ChunkPool``'s shared-memory arena (the model goes once per worker, in the arena's head)
and coded there while this thread takes the next blocks; the words come back in submission order and are appended
here, so the file is byte for byte the one coded in this thread (same model, same chunks, same coder).
``benchmarks/live_cpu_profile_dectris.py --modes dectris --outputs events`` (``--coder inline``: the old way), on
the busy 2-core development machine: the events sink's CPU in the receiving process fell from ~75 to ~11 us per
frame and the process's from ~130-150 to ~57-78; the worker spends ~47-50 us per frame beside it.

* Who owns the process: not this writer (sinks never start pools: ``info.executor``). The live run's executor is
  threads, and a process started by a library call would import the caller's main module (``exec.processes``),
  so the caller that may start one says so: ``sinks.events.stream_coder`` gives the one worker process that
  ``stempress live`` owns for the pass (handed down as ``receive(event_coder=)`` -> ``EventSink(coder=)``), and a
  run on worker processes (``--executor processes``) codes on those. One worker is enough: at ~50 us per frame it
  codes ~20,000 frames/s, more than a stream brings, and the other cores stay with the archive's threads.
* Started at ``__init__`` (the sink's ``open``), by a thread of its own handing the worker a first task: the
  first pool of a process starts the fork server, which imports stempress (observed: the submit returned after
  ~0.6 s, the worker ran its task after ~0.7 s; a later pool: ~6 ms and ~0.1 s), which would otherwise stall the
  stream at its first chunk. The model waits for 8 scan rows (~0.3 s of a fast stream), so the worker is usually
  up by then; until it is, chunks are coded here (the same bytes), never waited for.
* Bounded: ``ChunkPool`` has two slots per worker; a third chunk first takes the oldest back (this thread then
  waits for the worker), so at most two chunks (DECTRIS 96x96, 256 frames a row: 2 x 4.7 MB) are in flight besides
  the rows held for the next one. Handing a chunk over costs this thread ~2 us per frame (the profile's "arena
  copy"; the copy itself ~1 us, 0.25 ms per 4.7 MB chunk into a kept slot), less than what it saves besides the
  coding: the coder's big temporaries no longer fault fresh pages in this process (~10 page faults per frame
  before, ~1 after). The block's rows are released once copied.
* Inline, the same bytes: no executor (a library call, one usable core: ``stream_coder`` starts none), an arena
  /dev/shm cannot hold, a worker that cannot start or dies mid-stream (its chunks still in the arena are coded
  here) -- a live scan cannot be sent again, so the coder never fails it for want of a process.
* Shut down on every path: ``finish`` takes every chunk back; ``abort`` (an error, a second Ctrl-C) cancels what
  is queued and removes the arena (a chunk being coded finishes into it, unseen); the owner closes the executor
  after the pass (``stream_coder``'s exit: waits for a running chunk, ~10 ms), whose workers ignore Ctrl-C and
  leave when this process dies.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.entropy import ChunkWriter, default_chunk_rows
from stempress.data.entropy_coder import ChunkCoder
from stempress.data.entropy_model import PoissonModel, fit_model
from stempress.data.entropy_parallel import ChunkExecutor, ChunkPool, ModelBlob
from stempress.data.record import Record, write_h5_record
from stempress.errors import StempressError

#: Scan rows the streamed model is fitted on (fewer when the scan is shorter, or when they would hold more than
#: ``FIT_BYTES`` of dense counts: they wait in memory for the model).
FIT_ROWS = 8
FIT_BYTES = 64 * 1024**2
#: The record's name for the model a streamed file was coded with (``provenance.entropy_model``).
PREFIX_MODEL = "prefix"
#: What a worker that cannot be used raises when its chunk is handed over: the chunk is then coded here.
_NO_WORKER = (OSError, EOFError, RuntimeError, StempressError)


def _ready() -> int:
    """A worker's first task: it has started and imported the coder."""
    return os.getpid()


class StreamedEntropy:
    """Codes dense counts given in scan-row order (``add``) into ``path`` (a temporary name: the caller renames
    it), a chunk of ``chunk_rows`` rows as soon as its rows are in; ``finish`` codes the rest and writes
    ``record``; ``provenance`` says which model. ``executor``: worker processes on this machine that code the
    chunks (see the module doc), else this thread."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int], dtype: np.dtype,
                 fit_rows: int = FIT_ROWS, chunk_rows: int | None = None,
                 executor: ChunkExecutor | None = None) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(int(v) for v in shape), np.dtype(dtype)
        row_bytes = self.shape[1] * self.shape[2] * self.shape[3] * self.dtype.itemsize
        self.fit_rows = max(1, min(int(fit_rows), self.shape[0], FIT_BYTES // row_bytes))
        self.chunk_rows = chunk_rows or default_chunk_rows(self.shape, self.dtype)
        self.frame = self.shape[2] * self.shape[3]
        # rows not yet coded, (rows, scan_x, pixels): views of the blocks, not copies (a live receiver reuses a
        # buffer only once nothing refers to it)
        self._held: list[np.ndarray] = []
        self._held_rows = 0
        self._next = 0  # the next scan row expected
        self._file: h5py.File | None = None
        self._writer: ChunkWriter | None = None
        self.model: PoissonModel | None = None
        self._coder: ChunkCoder | None = None
        self.executor = executor
        self._pool: ChunkPool | None = None
        self._started: list[Future[Any] | BaseException] = []
        self._starter: threading.Thread | None = None
        self._waiting = executor is not None  # for the worker to start
        if executor is not None:  # the worker starts while the model's rows come in
            self._starter = threading.Thread(target=self._start, name="stempress-coder-start", daemon=True)
            self._starter.start()

    def _start(self) -> None:
        assert self.executor is not None
        try:
            self._started.append(self.executor.submit(_ready))
        except BaseException as exc:  # no worker: the chunks are coded in this thread
            self._started.append(exc)

    @property
    def provenance(self) -> dict[str, Any]:
        """The model the file was coded with, for the record (a whole-scan file records none)."""
        return {"name": PREFIX_MODEL, "fitted_rows": self.fit_rows, "groups": 1, "chunk_rows": self.chunk_rows}

    @property
    def coded_rows(self) -> int:
        """Scan rows handed to the coder so far (the rest wait for their chunk's last row, or for the model)."""
        return self._next - self._held_rows if self.model is not None else 0

    @property
    def on_worker(self) -> bool:
        """Whether chunks go to a worker process (else they are coded in this thread)."""
        return self._pool is not None

    def add(self, start: int, counts: np.ndarray) -> None:
        """The dense counts of scan rows ``start ..``, continuing the rows given before."""
        if start != self._next:
            raise ValueError(f"streamed entropy events: rows from {start} given, row {self._next} expected")
        counts = np.ascontiguousarray(counts, self.dtype).reshape(-1, self.shape[1], self.frame)
        self._held.append(counts)
        self._held_rows += counts.shape[0]
        self._next += counts.shape[0]
        if self.model is None and self._next >= self.fit_rows:
            self._open()
        if self.model is not None:
            self._code(last=False)

    def _open(self) -> None:
        rows = np.concatenate(self._held) if len(self._held) > 1 else self._held[0]
        self._held = [rows]
        first = rows[:self.fit_rows].reshape(-1, self.frame)
        self.model = fit_model(first.sum(axis=0, dtype=np.float64), first.shape[0], self.shape[0] * self.shape[1])
        self._file = h5py.File(self.path, "w", libver=("v110", "latest"))
        self._writer = ChunkWriter(self._file, self.model, self.shape, self.dtype)

    def _use_worker(self) -> None:
        """Open the worker's arena once the worker has run its first task. Until then (a first start takes up to
        ~0.7 s) the chunks are coded here, so the stream never waits for a start; a worker that could not start
        leaves them here for good."""
        started = self._started[0] if self._started else None  # appended by the start-up thread
        if started is None or (isinstance(started, Future) and not started.done()):
            return
        self._waiting = False
        if isinstance(started, BaseException) or started.cancelled() or started.exception() is not None:
            return
        assert self.executor is not None and self.model is not None
        slot = self.chunk_rows * self.shape[1] * self.frame * self.dtype.itemsize
        with contextlib.suppress(OSError):  # no shared memory here: None, as where /dev/shm has no room
            self._pool = ChunkPool.open(ModelBlob.of(self.model), self.executor, slot)

    def _inline(self) -> ChunkCoder:
        """The coder of this thread (built once: constriction's tables take milliseconds)."""
        if self._coder is None:
            assert self.model is not None
            self._coder = ChunkCoder(self.model)
        return self._coder

    def _rows(self, n: int) -> list[np.ndarray]:
        """The next ``n`` held rows, as the pieces they came in (views), each (positions, pixels)."""
        pieces, left = [], n
        while left:
            rows = self._held[0]
            if rows.shape[0] <= left:
                self._held.pop(0)
            else:
                rows, self._held[0] = rows[:left], rows[left:]
            pieces.append(rows.reshape(-1, self.frame))
            left -= rows.shape[0]
        self._held_rows -= n
        return pieces

    def _code(self, last: bool) -> None:
        """Hand every whole chunk held (and at the end the rest) to the coder, and append the chunks coded."""
        assert self._writer is not None
        if self._waiting:
            self._use_worker()
        while self._held_rows >= self.chunk_rows or (last and self._held_rows):
            n = min(self.chunk_rows, self._held_rows)
            pieces = self._rows(n)
            if self._pool is not None and self._hand_over(n, pieces):
                continue
            words, raw = self._inline().encode(np.concatenate(pieces) if len(pieces) > 1 else pieces[0])
            self._writer.append(n, words, raw)
        self._take(wait=last)

    def _hand_over(self, n: int, pieces: list[np.ndarray]) -> bool:
        """Copy a chunk into the worker's arena (taking the oldest back first when every slot is busy); False,
        with the worker given up, where it cannot take it (the caller codes it here)."""
        assert self._pool is not None
        if self._pool.full:
            self._take_one()
        try:
            self._pool.put_encode(n, pieces)
        except _NO_WORKER:
            self._take(wait=True)  # the chunks before it, in order (those of a dead worker coded here)
            self._pool.close()
            self._pool = None
            return False
        return True

    def _take(self, wait: bool) -> None:
        """Append the chunks coded, in order: those done already, or with ``wait`` all of them."""
        while self._pool is not None and self._pool.pending and (wait or self._pool.ready):
            self._take_one()

    def _take_one(self) -> None:
        assert self._pool is not None and self._writer is not None
        n, (words, raw) = self._pool.take_encoded(fallback=lambda frames: self._inline().encode(frames))
        self._writer.append(n, words, raw)

    def finish(self, record: Record) -> None:
        """Code the rows left, write the chunk index and ``record``, and close the file."""
        if self.model is None:  # a scan shorter than the fit's rows
            self.fit_rows = self._next
            self._open()
        self._code(last=True)
        self._close_pool()
        assert self._writer is not None and self._file is not None
        self._writer.finish()
        write_h5_record(self._file, record)
        self._file.close()
        self._file = None

    def _close_pool(self, keep: bool = True) -> None:
        """Give the arena back (``keep``: for a next pass, when every chunk was taken; else removed, its queued
        chunks cancelled) and wait for the start-up thread, so nothing of this writer runs after it."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(keep)
        if self._starter is not None:
            self._starter.join()

    def abort(self) -> None:
        """Drop the chunks in flight and their arena, and close the file (the caller deletes it)."""
        self._close_pool(keep=False)
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["FIT_ROWS", "PREFIX_MODEL", "StreamedEntropy"]
