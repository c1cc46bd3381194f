"""The entropy-coded format as an event file users write and read back anywhere: ``data.entropy``'s coded chunks
and model, plus the record of ``events.record`` (calibration, provenance, counting) under ``metadata/stempress``.

Why a layer of its own: ``data.entropy`` is the codec (model, coder, chunk layout, its own integrity checks);
this module is what makes its file a product like the stempy and raw_csr files: written atomically from any
integer source (``stempress count --format entropy``, ``stempress compress --codec entropy_poisson``), opened by
``open_source`` like any cube (``data.entropy_file``: ``reduce``, ``plan``, ``bench``, ``verify --against``),
calibrated. The format is
lossless for non-negative integer counts.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from stempress.atomic import atomic_output
from stempress.data.base import Dataset4D
from stempress.data.entropy import write_entropy_coded
from stempress.data.entropy_file import FORMAT
from stempress.data.entropy_parallel import ChunkExecutor
from stempress.data.events import Events, as_source, check_counts_dtype
from stempress.data.record import Record, write_h5_record
from stempress.events.record import event_record


def write_entropy_events(source: Dataset4D | Events, out: str | Path, *, force: bool = False,
                         record: Record | None = None, executor: ChunkExecutor | None = None,
                         chunk_rows: int | None = None) -> Path:
    """Write integer counts entropy-coded (model fitted on the whole cube: two passes over ``source``), with
    ``record`` (default: the source's calibration and provenance); the file appears whole or not at all. Chunks
    are coded on ``executor``'s worker processes where one is given (the caller's to close)."""
    src = as_source(source)
    check_counts_dtype(src.dtype, src.name)
    out = Path(out)
    record = event_record(src, FORMAT) if record is None else record
    with atomic_output(out, force=force) as tmp:
        write_entropy_coded(src, tmp, force=True, executor=executor, chunk_rows=chunk_rows)
        with h5py.File(tmp, "a") as f:
            write_h5_record(f, record)
    return out
