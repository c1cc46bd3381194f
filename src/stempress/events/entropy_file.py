"""The entropy-coded format as an event file users write and read back anywhere: ``data.entropy``'s coded chunks
and model, plus the record of ``events.record`` (calibration, provenance, counting) under ``metadata/stempress``.

Why a layer of its own: ``data.entropy`` is the codec (model, coder, chunk layout, its own integrity checks);
this module is what makes its file a product like the stempy and raw_csr files: written atomically from any
integer source (``stempress count --format entropy``, ``stempress compress --codec entropy_poisson``), opened by
``open_source`` like any cube (``data.entropy_file``: ``reduce``, ``plan``, ``bench``, ``verify --against``),
calibrated. The format is
lossless for non-negative integer counts.

``ModelFit`` is the model's first pass (the mean pattern, the sampled positions' features) taken from blocks as
they pass, so a writer that sees every count once (``sinks.events``, live) fits the same model as
``write_entropy_coded`` with one pass fewer over its staged counts at the end.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from stempress.atomic import atomic_output
from stempress.data.base import Dataset4D, iter_blocks, rows_for_budget
from stempress.data.entropy import encode_blocks, write_entropy_coded
from stempress.data.entropy_file import FORMAT
from stempress.data.entropy_groups import ScanGroups
from stempress.data.entropy_model import PoissonModel, fit_model
from stempress.data.entropy_parallel import ChunkExecutor
from stempress.data.events import Events, as_source, check_counts_dtype, iter_events
from stempress.data.record import Record, write_h5_record
from stempress.events.record import event_record


class ModelFit:
    """``data.entropy.fit_source``'s first pass, fed block by block (``sample`` each block's counts in scan order,
    with its per-pixel sums kept by the caller), then ``model`` runs the rest over the whole cube: the model it
    returns is the one ``fit_source`` fits on the same counts, so the file is the same byte for byte."""

    def __init__(self, shape: tuple[int, int, int, int]) -> None:
        self.shape = tuple(int(v) for v in shape)
        self.groups = ScanGroups(self.shape[0] * self.shape[1], (self.shape[2], self.shape[3]))

    def sample(self, first: int, frames: np.ndarray) -> None:
        """The features of the sampled positions among ``frames`` (positions ``first`` on), in scan order."""
        self.groups.sample(first, np.asarray(frames).reshape(-1, self.shape[2] * self.shape[3]))

    def model(self, total: np.ndarray, source: Dataset4D) -> PoissonModel:
        """The model from ``total`` (every position's counts summed per pixel, exact) and ``source`` (the same
        counts, read again as events only where the scan is long enough to group its positions)."""
        groups = self.groups
        if groups.wanted:
            groups.cluster()
            for events in iter_events(source, rows_for_budget(source)):  # fit_source's blocks, as events
                groups.add_events(events.start * self.shape[1], events.indptr, events.indices, events.counts)
        return fit_model(np.asarray(total, np.float64).reshape(-1), self.shape[0] * self.shape[1],
                         groupings=groups.groupings())


def write_entropy_events(source: Dataset4D | Events, out: str | Path, *, force: bool = False,
                         record: Record | None = None, executor: ChunkExecutor | None = None,
                         chunk_rows: int | None = None, model: PoissonModel | None = None) -> Path:
    """Write integer counts entropy-coded (model fitted on the whole cube: two passes over ``source``; one with
    ``model``, fitted so already: ``ModelFit``), with ``record`` (default: the source's calibration and
    provenance); the file appears whole or not at all. Chunks are coded on ``executor``'s worker processes where
    one is given (the caller's to close)."""
    src = as_source(source)
    check_counts_dtype(src.dtype, src.name)
    out = Path(out)
    record = event_record(src, FORMAT) if record is None else record
    with atomic_output(out, force=force) as tmp:
        if model is None:
            write_entropy_coded(src, tmp, force=True, executor=executor, chunk_rows=chunk_rows)
        else:  # write_entropy_coded's pass, its model given
            encode_blocks(tmp, iter_blocks(src, rows_for_budget(src)), src.shape, src.dtype, model=model,
                          chunk_rows=chunk_rows, executor=executor)
        with h5py.File(tmp, "a") as f:
            write_h5_record(f, record)
    return out
