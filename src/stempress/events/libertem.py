"""LiberTEM's ``raw_csr`` layout, written: a TOML sidecar naming three flat binary files that form one CSR matrix,
with the checksums of every chunk and the record of ``events.record`` in tables LiberTEM does not read. The layout
and its reader are ``data.raw_csr``'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import numpy as np

from stempress.atomic import atomic_output, discard, writing
from stempress.data.base import Dataset4D
from stempress.data.event_checksums import EventChecksums, positions_per_chunk
from stempress.data.events import EventBlock, Events, as_source, check_counts_dtype, iter_events
from stempress.data.raw_csr import CHECKSUM_TABLE, FILETYPE, INDICES_DTYPE, INDPTR_DTYPE, PARTS, parts_of
from stempress.data.record import Record, record_toml, toml_table
from stempress.errors import StempressError
from stempress.events.record import event_record


def raw_csr_files(toml_path: str | Path) -> dict[str, Path]:
    """Where ``write_raw_csr`` puts the three binary files: beside the TOML, named after it."""
    toml_path = Path(toml_path)
    stem = toml_path.with_suffix("")
    return {part: stem.with_name(f"{stem.name}.{part}.bin") for part in ("indptr", "indices", "data")}


def _toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def _sidecar(shape: tuple[int, int, int, int], files: dict[str, Path], data_dtype: np.dtype) -> str:
    names = {part: _toml_string(path.name) for part, path in files.items()}
    return "\n".join([
        "# LiberTEM raw_csr sidecar written by stempress: a CSR matrix, rows = scan positions (row-major),",
        "# columns = flat detector pixels (row * det_x + col); file names are relative to this file.",
        "[params]",
        f'filetype = "{FILETYPE}"',
        f"nav_shape = [{shape[0]}, {shape[1]}]",
        f"sig_shape = [{shape[2]}, {shape[3]}]",
        "",
        f"[{FILETYPE}]",
        f"indptr_file = {names['indptr']}",
        f'indptr_dtype = "{INDPTR_DTYPE.str}"',
        f"indices_file = {names['indices']}",
        f'indices_dtype = "{INDICES_DTYPE.str}"',
        f"data_file = {names['data']}",
        f'data_dtype = "{data_dtype.str}"',
        "",
    ])


def write_raw_csr(source: Dataset4D | Events, toml_path: str | Path, *, force: bool = False,
                  rows: int | None = None, record: Record | None = None) -> Path:
    """Write a counted cube (or its events) as LiberTEM raw_csr, one block of scan rows at a time.

    All four files are written under temporary names and renamed only when every one is complete
    (the TOML last), so a failure leaves none of them, and no existing file is replaced without
    ``force``. ``record`` (default: the source's calibration and provenance) goes into the TOML.
    """
    src = as_source(source)
    check_counts_dtype(src.dtype, src.name)
    events = iter_events(src, rows)  # refuses a float source before any file is created
    record = event_record(src, FILETYPE) if record is None else record
    return write_raw_csr_events(events, toml_path, src.shape, src.dtype, force=force, record=record)


def require_toml_name(toml_path: str | Path) -> Path:
    """A raw_csr set is named by its TOML sidecar: refuse any other name before anything is written."""
    toml_path = Path(toml_path)
    if toml_path.suffix.lower() != ".toml":
        raise StempressError(f"{toml_path}: the raw_csr sidecar must be a .toml file; give a name like scan.toml")
    return toml_path


def write_raw_csr_events(events: Iterable[EventBlock], toml_path: str | Path, shape: tuple[int, int, int, int],
                         dtype: Any, *, force: bool = False, record: Record | None = None) -> Path:
    """Write consecutive event blocks (seen once, top to bottom) as raw_csr, atomically like ``write_raw_csr``,
    with the checksums of every chunk and ``record`` (if given) in the TOML."""
    with writing(Path(toml_path)), RawCsrWriter(toml_path, shape, dtype, force=force) as writer:
        for block in events:
            writer.append(block)
        return writer.close(record)


class RawCsrWriter:
    """raw_csr written as event blocks arrive: ``append`` each block in row order, then ``close`` once.

    Push, not pull, so a sink of the engine writes it while the engine reads (no thread, no second pass). The
    four files are written under temporary names from the start and renamed by ``close``, the TOML last;
    ``abort`` (or leaving the ``with`` block without ``close``) deletes them, so a failure leaves none.
    """

    def __init__(self, toml_path: str | Path, shape: tuple[int, int, int, int], dtype: Any, *,
                 force: bool = False) -> None:
        self.path = require_toml_name(toml_path)
        self.shape = tuple(int(v) for v in shape)
        self.files = raw_csr_files(self.path)
        self.data_dtype = np.dtype(dtype).newbyteorder("<")
        self._outputs: ExitStack | None = ExitStack()
        self._handles = ExitStack()
        try:
            self._tmp_toml = self._outputs.enter_context(atomic_output(self.path, force=force))  # last
            self._tmp = {part: self._outputs.enter_context(atomic_output(path, force=force))
                         for part, path in self.files.items()}
            self._fh = {part: self._handles.enter_context(open(self._tmp[part], "wb"))  # noqa: SIM115 (closed by close/abort)
                        for part in PARTS}
            self._fh["indptr"].write(np.zeros(1, INDPTR_DTYPE).tobytes())
        except BaseException:
            self.abort()
            raise
        self._offset = 0
        self._next_row = 0

    def append(self, block: EventBlock) -> None:
        """The next scan rows' events (``block.start`` continues the last block)."""
        if block.start != self._next_row or tuple(block.shape[1:]) != self.shape[1:]:
            raise ValueError(f"event block at row {block.start} with shape {block.shape} does not continue row "
                             f"{self._next_row} of a {self.shape} cube")
        self._fh["indptr"].write((block.indptr[1:] + self._offset).astype(INDPTR_DTYPE).tobytes())
        self._fh["indices"].write(block.indices.astype(INDICES_DTYPE, copy=False).tobytes())
        self._fh["data"].write(block.counts.astype(self.data_dtype).tobytes())
        self._offset += block.n_events
        self._next_row = block.stop

    def close(self, record: Record | None = None) -> Path:
        """Checksums and ``record`` into the TOML, then every file gets its name (the TOML last)."""
        if self._outputs is None:
            raise StempressError(f"{self.path}: the raw_csr writer was already closed or aborted")
        if self._next_row != self.shape[0]:
            raise StempressError(f"{self.path}: events for {self._next_row} of {self.shape[0]} scan rows were "
                                 "written; a raw_csr set must cover the whole scan")
        if self._offset == 0:  # numpy (so LiberTEM) cannot map an empty file: one value no position points at
            self._fh["indices"].write(np.zeros(1, INDICES_DTYPE).tobytes())
            self._fh["data"].write(np.zeros(1, self.data_dtype).tobytes())
        self._handles.close()
        dtypes = {"indptr": INDPTR_DTYPE, "indices": INDICES_DTYPE, "data": self.data_dtype}
        maps = {part: np.memmap(self._tmp[part], dtypes[part], "r") for part in PARTS}  # the bytes as on disk
        sums = EventChecksums.compute(self.shape[0] * self.shape[1], positions_per_chunk(self.shape),
                                      parts_of(maps), PARTS)
        text = _sidecar(self.shape, self.files, self.data_dtype) + toml_table(CHECKSUM_TABLE, sums.to_dict())
        outputs, self._outputs = self._outputs, None
        try:
            self._tmp_toml.write_text(text + (record_toml(record) if record else ""), encoding="utf-8")
        except BaseException:
            discard(outputs)
            raise
        outputs.close()
        return self.path

    def abort(self) -> None:
        """Delete the partial files (nothing of the set appears); never raises over the error that led here."""
        with suppress(OSError):  # a full disk fails the last flush of files about to be deleted anyway
            self._handles.close()
        if self._outputs is not None:
            outputs, self._outputs = self._outputs, None
            discard(outputs)

    def __enter__(self) -> RawCsrWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # a no-op after close
