"""``count``: detector frames counted into electrons and written as an event file (stempy, raw_csr or the
entropy code), one ``EventSink`` on the engine."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from stempress.data.base import Dataset4D
from stempress.data.stream import StreamSource
from stempress.engine import run
from stempress.events.counting import CountingParams, CountReport
from stempress.exec.base import Executor
from stempress.progress import Progress
from stempress.sinks.events import EventSink


def count_to_file(source: Dataset4D | StreamSource, out: str | Path, params: CountingParams, *,
                  fmt: str | None = None, force: bool = False, rows: int | None = None,
                  inputs: Mapping[str, str] | None = None, progress: Progress | None = None,
                  executor: Executor | None = None) -> CountReport:
    """Count ``source`` block by block and write the electrons as events, with the parameters, the source's
    calibration and the provenance recorded: one ``EventSink`` on the engine (``sinks.events``).

    Everything is checked (format, references against the detector, existing outputs) before any frame
    is read. The counts are staged once as raw_csr beside ``out`` (so a stempy or entropy-coded file, which needs
    a pass over the counts first, neither counts nor reads the frames twice) and the outputs appear whole or not
    at all. ``inputs`` (e.g. the reference files the user named) is stored in the record as given. ``executor``
    (default inline) counts each block's frames on its workers; ``progress(rows_done, scan_rows)`` counts scan
    rows.
    """
    sink = EventSink(out, params, fmt=fmt, force=force, rows=rows, inputs=inputs)
    (report,) = run(source, [sink], executor=executor, progress=_in_rows(progress, source), rows=rows)
    return report


def _in_rows(progress: Progress | None, source: Dataset4D | StreamSource) -> Progress | None:
    """The engine counts bytes; ``count_to_file`` has always reported scan rows."""
    if progress is None:
        return None
    row_bytes = max(1, int(np.prod(source.shape[1:])) * np.dtype(source.dtype).itemsize)
    return lambda done, _total: progress(done // row_bytes, int(source.shape[0]))
