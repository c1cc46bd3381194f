"""Counted electrons as events (pixel, count per scan position), and the event files other tools read."""

from stempress.data.event_checksums import ChecksumError
from stempress.data.events import (
    EventBlock,
    EventReader,
    Events,
    EventsSource,
    as_source,
    dense_from_events,
    events_from_block,
    events_from_hits,
    iter_events,
)
from stempress.data.raw_csr import RawCsrSource
from stempress.data.stempy import StempySource
from stempress.events.counting import (
    CountedSource,
    CountingParams,
    count_frames,
    counting_accuracy,
    read_counting_record,
)
from stempress.events.libertem import raw_csr_files, write_raw_csr
from stempress.events.stempy import write_stempy

__all__ = [
    "ChecksumError",
    "CountedSource",
    "CountingParams",
    "EventBlock",
    "EventReader",
    "Events",
    "EventsSource",
    "RawCsrSource",
    "StempySource",
    "as_source",
    "count_frames",
    "counting_accuracy",
    "dense_from_events",
    "events_from_block",
    "events_from_hits",
    "iter_events",
    "open_entropy",
    "raw_csr_files",
    "read_counting_record",
    "write_entropy_events",
    "write_raw_csr",
    "write_stempy",
]


def __getattr__(name: str):
    """The entropy-coded format's entry points, imported only when asked for (they load the codec's modules)."""
    if name == "open_entropy":
        from stempress.data.entropy_file import open_entropy

        return open_entropy
    if name == "write_entropy_events":
        from stempress.events.entropy_file import write_entropy_events

        return write_entropy_events
    raise AttributeError(f"module 'stempress.events' has no attribute {name!r}")
