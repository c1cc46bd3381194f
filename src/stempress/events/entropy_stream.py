"""The entropy-coded event file written while a live stream is received: the model is fitted on the scan's first
rows, and from then on each chunk of rows is coded as soon as its rows are in, so the end of the scan leaves only
the last chunk and the file's index to write.

Why: the whole-scan model (``events.entropy_file.ModelFit``) can only code once the scan has ended, ~80 us of CPU
per frame that a stream pays after its last frame, growing with the scan (issue #14). The format stores its model,
and every count stays codable under any model (escapes), so a model from a prefix reads back with the same reader
and ``stempress verify``: the one-pass file codec (``data.entropy.encode_blocks`` without a model) fits its model
the same way, on its first block, one group. The counts are exact either way; only the ratio depends on the model.
Files at rest keep the whole-scan model (``stempress count`` / ``ingest`` outputs are unchanged).

The chunks are coded in the thread that consumes the blocks, not on the run's threads: constriction holds the GIL,
so a worker thread gains nothing and the hand-offs cost (DECTRIS 96x96, ``benchmarks/live_cpu_profile_dectris.py
--outputs events``: ~160 against ~180 us of process CPU per frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.entropy import ChunkWriter, default_chunk_rows
from stempress.data.entropy_coder import ChunkCoder
from stempress.data.entropy_model import PoissonModel, fit_model
from stempress.data.record import Record, write_h5_record

#: Scan rows the streamed model is fitted on (fewer when the scan is shorter, or when they would hold more than
#: ``FIT_BYTES`` of dense counts: they wait in memory for the model).
FIT_ROWS = 8
FIT_BYTES = 64 * 1024**2
#: The record's name for the model a streamed file was coded with (``provenance.entropy_model``).
PREFIX_MODEL = "prefix"


class StreamedEntropy:
    """Codes dense counts given in scan-row order (``add``) into ``path`` (a temporary name: the caller renames
    it), a chunk of ``chunk_rows`` rows as soon as its rows are in; ``finish`` codes the rest and writes
    ``record``; ``provenance`` says which model."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int], dtype: np.dtype,
                 fit_rows: int = FIT_ROWS, chunk_rows: int | None = None) -> None:
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

    @property
    def provenance(self) -> dict[str, Any]:
        """The model the file was coded with, for the record (a whole-scan file records none)."""
        return {"name": PREFIX_MODEL, "fitted_rows": self.fit_rows, "groups": 1, "chunk_rows": self.chunk_rows}

    @property
    def coded_rows(self) -> int:
        """Scan rows coded so far (the rest wait for their chunk's last row, or for the model)."""
        return self._next - self._held_rows if self.model is not None else 0

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
        self._coder = ChunkCoder(self.model)
        self._file = h5py.File(self.path, "w", libver=("v110", "latest"))
        self._writer = ChunkWriter(self._file, self.model, self.shape, self.dtype)

    def _code(self, last: bool) -> None:
        """Code every whole chunk held (and at the end the rest) and append it to the file."""
        assert self._coder is not None and self._writer is not None
        while self._held_rows >= self.chunk_rows or (last and self._held_rows):
            rows = np.concatenate(self._held) if len(self._held) > 1 else self._held[0]
            n = min(self.chunk_rows, rows.shape[0])
            chunk, rest = rows[:n], rows[n:]
            self._held, self._held_rows = ([rest] if rest.shape[0] else []), rest.shape[0]
            words, raw = self._coder.encode(chunk.reshape(-1, self.frame))
            self._writer.append(n, words, raw)

    def finish(self, record: Record) -> None:
        """Code the rows left, write the chunk index and ``record``, and close the file."""
        if self.model is None:  # a scan shorter than the fit's rows
            self.fit_rows = self._next
            self._open()
        self._code(last=True)
        assert self._writer is not None and self._file is not None
        self._writer.finish()
        write_h5_record(self._file, record)
        self._file.close()
        self._file = None

    def abort(self) -> None:
        """Close the file (the caller deletes it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["FIT_ROWS", "PREFIX_MODEL", "StreamedEntropy"]
