"""The entropy-coded format as an event file users write and read back anywhere: ``events.entropy``'s coded chunks
and model, plus the record of ``events.record`` (calibration, provenance, counting) under ``metadata/stempress``.

Why a layer of its own: ``events.entropy`` is the codec (model, coder, chunk layout, its own integrity checks);
this module is what makes its file a product like the stempy and raw_csr files: written atomically from any
integer source (``stempress count --format entropy``, ``stempress compress --codec entropy_poisson``), opened by
``open_source`` like any cube (``reduce``, ``plan``, ``bench``, ``verify --against``), calibrated. The format is
lossless for non-negative integer counts.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from stempress.atomic import atomic_output
from stempress.data.base import Dataset4D
from stempress.data.events import Events, as_source, check_counts_dtype
from stempress.data.record import Record, read_h5_record, write_h5_record
from stempress.events.entropy import (
    CHECKSUM_ATTR,
    FORMAT_NAME,
    EntropyCodedSource,
    attr_text,
    write_entropy_coded,
)
from stempress.events.record import event_record

#: The name users give the format (``--format entropy``) and the codec's catalog name.
FORMAT = "entropy"
CODEC = "entropy_poisson"


def write_entropy_events(source: Dataset4D | Events, out: str | Path, *, force: bool = False,
                         record: Record | None = None, workers: int | None = 1,
                         chunk_rows: int | None = None) -> Path:
    """Write integer counts entropy-coded (model fitted on the whole cube: two passes over ``source``), with
    ``record`` (default: the source's calibration and provenance); the file appears whole or not at all."""
    src = as_source(source)
    check_counts_dtype(src.dtype, src.name)
    out = Path(out)
    record = event_record(src, FORMAT) if record is None else record
    with atomic_output(out, force=force) as tmp:
        write_entropy_coded(src, tmp, force=True, workers=workers, chunk_rows=chunk_rows)
        with h5py.File(tmp, "a") as f:
            write_h5_record(f, record)
    return out


def is_entropy_file(f: h5py.File) -> bool:
    """Whether an open HDF5 file is a stempress entropy-coded file."""
    return attr_text(f, "format") == FORMAT_NAME


def open_entropy(path: str | Path, workers: int | None = 1) -> EntropyCodedSource:
    """The file as a source whose metadata carries its record (``metadata["calibration"]`` and so on)."""
    path = Path(path)
    source = EntropyCodedSource(path, workers=workers)
    try:
        with h5py.File(path, "r") as f:
            record = read_h5_record(f)
    except BaseException:
        source.close()
        raise
    source.metadata.update({"format": FORMAT, "file": str(path), **record})
    return source


def has_checksums(path: str | Path) -> bool:
    """Whether an entropy-coded file carries CRCs of its chunks, which its reader checks (format version 3 on:
    the ``checksum_algorithm`` attribute that marks them); files written before read unchecked."""
    with h5py.File(path, "r") as f:
        return CHECKSUM_ATTR in f.attrs and "crc" in f.get("chunks", {})
