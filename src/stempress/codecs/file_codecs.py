"""The catalog's codecs that write a file format of their own (implemented in ``bench.baselines``): the study's
non-HDF5 baselines, the counted-electron event list and the entropy-coded counts."""

from __future__ import annotations

from dataclasses import dataclass

from stempress.codecs.base import FileCodec


@dataclass(frozen=True)
class BaselineFile(FileCodec):
    """One of the study's non-HDF5 baselines (sparse CSR, uint8 + overflow, whole-array gzip)."""

    codec_id = "baseline"
    family = "baseline"


@dataclass(frozen=True)
class EventsFile(FileCodec):
    """Counted electrons as an event list per scan position (LiberTEM raw_csr)."""

    codec_id = "events"
    family = "events"
    counts_only = True


@dataclass(frozen=True)
class EntropyFile(FileCodec):
    """Counted electrons entropy-coded against a fitted model (``events.entropy_file``)."""

    codec_id = "entropy"
    family = "entropy"
    counts_only = True
