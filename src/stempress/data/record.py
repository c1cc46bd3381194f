"""What an event file says besides its counts: the calibration, the provenance and (for counted data) the counting
record, kept where each format's own readers leave it alone, and handed back as the reader's metadata.

- stempy and entropy-coded files (HDF5): attributes of ``metadata/stempress/<section>`` (sub-dicts as sub-groups).
  stempy loads the ``metadata`` group into ``SparseArray.metadata``, so a stempy user sees them too.
- raw_csr: tables ``[stempress.<section>]`` of the TOML sidecar; LiberTEM reads only ``[params]`` and the table
  that ``params.filetype`` names.

Readers put each section back under its own key of ``metadata``, so a reader of an event file carries
``metadata["calibration"]`` the way an emdfile source does, and ``calibration_from`` / ``Calibration.from_metadata``
find the scan step, the detector pixel size and the beam centre in it: a reduction of counted data is calibrated.

Here, beside the readers that hand it back, the format of the record (where each section lives, how it is written
and read); what a writer puts in it (``event_record``: calibration and provenance of a source) is
``events.record``'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from stempress.data.hdf5 import as_python

#: The sections an event file may carry, in the order they are written.
SECTIONS = ("calibration", "provenance", "counting")
#: Where they live in an HDF5 event file (stempy loads ``metadata/`` into ``SparseArray.metadata``).
HDF5_GROUP = "metadata/stempress"
#: The TOML table that holds them in a raw_csr sidecar.
TOML_TABLE = "stempress"

Record = dict[str, Any]


# -- HDF5 ----------------------------------------------------------------------------------------------------
def write_h5_record(f: h5py.File, record: Mapping[str, Any]) -> None:
    """Each section as attributes of ``metadata/stempress/<section>``, sub-dicts as sub-groups."""
    for section in SECTIONS:
        if isinstance(record.get(section), Mapping):
            group = f.require_group(f"{HDF5_GROUP}/{section}")
            _h5_attrs(group, record[section])


def _h5_attrs(group: h5py.Group, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping):
            _h5_attrs(group.require_group(str(key)), value)
        elif value is not None:
            group.attrs[str(key)] = value


def _h5_dict(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {k: as_python(v) for k, v in group.attrs.items()}
    out.update({k: _h5_dict(v) for k, v in group.items() if isinstance(v, h5py.Group)})
    return out


def read_h5_record(f: h5py.File) -> Record:
    """The sections an HDF5 event file carries ({} for files written without them)."""
    found: Record = {}
    for section in SECTIONS:
        group = f.get(f"{HDF5_GROUP}/{section}")
        if isinstance(group, h5py.Group):
            found[section] = _h5_dict(group)
    return found


# -- TOML ----------------------------------------------------------------------------------------------------
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value)) if np.isfinite(value) else ("nan" if np.isnan(value) else
                                                              ("inf" if value > 0 else "-inf"))
    if isinstance(value, list | tuple | np.ndarray):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON's string escapes are a subset of TOML's


def toml_table(name: tuple[str, ...], values: Mapping[str, Any]) -> str:
    """``values`` as a TOML table (sub-dicts as sub-tables; None has no TOML form and is left out)."""
    lines = ["", f"[{'.'.join(_toml_key(k) for k in name)}]"]
    lines += [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in values.items()
              if v is not None and not isinstance(v, Mapping)]
    text = "\n".join(lines) + "\n"
    for k, v in values.items():
        if isinstance(v, Mapping):
            text += toml_table((*name, str(k)), v)
    return text


def record_toml(record: Mapping[str, Any]) -> str:
    """The sections as ``[stempress.<section>]`` tables, to append to a raw_csr sidecar."""
    return "".join(toml_table((TOML_TABLE, section), record[section]) for section in SECTIONS
                   if isinstance(record.get(section), Mapping))


def read_toml_record(conf: Mapping[str, Any]) -> Record:
    """The sections a parsed raw_csr sidecar carries ({} for sidecars written without them)."""
    table = conf.get(TOML_TABLE)
    if not isinstance(table, Mapping):
        return {}
    return {section: dict(table[section]) for section in SECTIONS if isinstance(table.get(section), Mapping)}
