"""Counted electrons as events (pixel, count per scan position), and the event files other tools read."""

from stempress.events.counting import (
    CountedSource,
    CountingParams,
    count_frames,
    count_to_file,
    counting_accuracy,
    read_counting_record,
)
from stempress.events.libertem import RawCsrSource, raw_csr_files, write_raw_csr
from stempress.events.representation import (
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
from stempress.events.stempy import StempySource, write_stempy

__all__ = [
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
    "count_to_file",
    "counting_accuracy",
    "dense_from_events",
    "events_from_block",
    "events_from_hits",
    "iter_events",
    "raw_csr_files",
    "read_counting_record",
    "write_raw_csr",
    "write_stempy",
]
