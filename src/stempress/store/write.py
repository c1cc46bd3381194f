"""Stream any source into an HDF5 file (``stempress simulate``, a binned plan representation), so cubes larger
than memory can be written: the archive sink on the engine, with h5py's own filter keywords.

The default layout is EMD 1.0 as emdfile/py4DSTEM write it (``stempress.data.emd``: root attributes, root
group, DataCube with dims and calibration), the layout ``compress`` writes, so ``py4DSTEM.read`` and HyperSpy's
EMD reader open what ``stempress simulate`` writes; ``layout="plain"`` writes only the dataset (the study's path
by default). The file appears under its final name only when complete, so a crash or Ctrl-C never leaves a
truncated file that looks finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stempress.data.base import Dataset4D, check_shape_dtype
from stempress.data.emd import data_path
from stempress.engine import run
from stempress.errors import StempressError
from stempress.exec.local import ThreadExecutor
from stempress.progress import Progress
from stempress.sinks.archive import ArchiveResult, ArchiveSink, ArchiveSpec


def write_hdf5(
    source: Dataset4D,
    out: Path | str,
    *,
    layout: str = "emd",
    dataset_path: str | None = None,
    chunks: tuple[int, ...] | None = None,
    compression_kwargs: Mapping[str, Any] | None = None,
    truth: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    rows: int | None = None,
) -> Path:
    """Write ``source`` to ``out`` (HDF5) in ``layout`` (``emd`` or ``plain``) and return the path.

    ``dataset_path`` applies to the plain layout (default: the study's path). ``chunks`` is capped to the
    cube; ``compression_kwargs`` go to ``create_dataset`` as they are (e.g. ``hdf5plugin.Blosc(...)``). With
    ``truth=True`` the source's ``expected_rows`` is stored as float32 in ``expected`` beside the data (EMD
    readers read only ``data``). ``progress(bytes_done, bytes_total)`` counts the source's bytes.
    """
    out = Path(out)
    data_path(layout, dataset_path)  # an unknown layout or a misplaced path is refused before any work
    if truth and not callable(getattr(source, "expected_rows", None)):
        raise StempressError(f"source {source.name!r} has no expected-count map; drop --truth")
    shape = check_shape_dtype(tuple(source.shape), np.dtype(source.dtype), source.name)
    if chunks is not None:
        if len(chunks) != 4 or min(chunks) < 1:
            raise StempressError(f"chunks {tuple(chunks)} must be 4 positive sizes, like (16, 16, 128, 128)")
        chunks = tuple(min(int(c), n) for c, n in zip(chunks, shape, strict=True))
    spec = ArchiveSpec(out, None, chunks, layout, dataset_path, force, checksums=False,
                       truth=source.expected_rows if truth else None,  # type: ignore[attr-defined]
                       filter_kwargs=dict(compression_kwargs or {}))
    run(source, [ArchiveSink(spec)], progress=progress, rows=rows)
    return out


def write_archive(source: Any, spec: ArchiveSpec, *, workers: int | None = 1,
                  progress: Progress | None = None) -> ArchiveResult:
    """``source`` (a source or a ``BlockStream``) written by one ``ArchiveSink`` on ``workers`` threads."""
    with ThreadExecutor(workers) as executor:
        (result,) = run(source, [ArchiveSink(spec)], executor=executor, progress=progress)
    return result
