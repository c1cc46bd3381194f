"""The entropy-coded event file read back: recognised, opened as a source whose metadata carries its record, and
asked whether it carries checksums (``events.entropy_file`` writes it; ``data.entropy`` is the codec)."""

from __future__ import annotations

from pathlib import Path

import h5py

from stempress.data.entropy import CHECKSUM_ATTR, FORMAT_NAME, EntropyCodedSource, attr_text
from stempress.data.entropy_parallel import ChunkExecutor
from stempress.data.record import read_h5_record

#: The name users give the format (``--format entropy``) and the codec's catalog name.
FORMAT = "entropy"
CODEC = "entropy_poisson"


def is_entropy_file(f: h5py.File) -> bool:
    """Whether an open HDF5 file is a stempress entropy-coded file."""
    return attr_text(f, "format") == FORMAT_NAME


def open_entropy(path: str | Path, executor: ChunkExecutor | None = None) -> EntropyCodedSource:
    """The file as a source whose metadata carries its record (``metadata["calibration"]`` and so on); chunks
    decode on ``executor``'s worker processes where one is given (the caller closes it after the source)."""
    path = Path(path)
    source = EntropyCodedSource(path, executor=executor)
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
