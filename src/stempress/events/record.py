"""What an event file's writer records about its source: the calibration, the provenance and (for counted data)
the counting record, as the sections ``data.record`` writes into the file and its readers hand back.

Why apart from ``data.record``: the calibration comes from ``reduce.calibration``, a layer above the readers.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

import numpy as np

from stempress.data.base import Dataset4D
from stempress.data.record import Record


def calibration_fields(metadata: Mapping[str, Any], det_shape: tuple[int, ...]) -> dict[str, Any]:
    """The source's calibration as stored fields: scan step and detector pixel size with their units (emdfile's
    names), and the beam centre / BF radius in detector pixels where the source knows them (not measured here)."""
    from stempress.data.emd import calibration_from
    from stempress.reduce.calibration import Calibration

    fields: dict[str, Any] = calibration_from(metadata).fields()
    geometry = Calibration.from_metadata(metadata, det_shape)
    if geometry.origin == "metadata":
        fields["bf_disk_center_px"] = [geometry.centre_y, geometry.centre_x]
    if geometry.bf_radius_px is not None:
        fields["bf_disk_radius_px"] = geometry.bf_radius_px
    return fields


def provenance(source: Dataset4D, written_as: str) -> dict[str, Any]:
    """Where the counts came from and what wrote them; an event source's own provenance is kept as
    ``derived_from``, so a chain of conversions stays readable."""
    from stempress import __version__

    md = source.metadata
    origin: dict[str, Any] = {"name": str(source.name), "shape": [int(v) for v in source.shape],
                              "dtype": str(np.dtype(source.dtype))}
    for key in ("file", "format"):
        if isinstance(md.get(key), str):
            origin[key] = md[key]
    record: dict[str, Any] = {"written_as": written_as, "written_by": f"stempress {__version__}",
                              "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "source": origin}
    if isinstance(md.get("provenance"), Mapping):
        record["derived_from"] = dict(md["provenance"])
    return record


def event_record(source: Dataset4D, written_as: str) -> Record:
    """The calibration and provenance of ``source`` (and its counting record, if it is counted data)."""
    record: Record = {"calibration": calibration_fields(source.metadata, tuple(source.shape[2:])),
                      "provenance": provenance(source, written_as)}
    counting = source.metadata.get("counting")
    if isinstance(counting, Mapping):
        record["counting"] = dict(counting)
    return record
