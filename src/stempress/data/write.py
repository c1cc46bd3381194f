"""A cube's metadata in HDF5: the source's metadata as strict JSON on the dataset, its scalar calibration as
attributes beside it (``store.write.write_hdf5`` and the archive sink write it; ``data.emd.read_metadata`` reads it
back from where the layout put the cube)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.calibration import CALIBRATION_KEYS

#: Attribute holding the source's whole metadata as a JSON string.
METADATA_ATTR = "stempress_metadata"


def write_metadata(dset: h5py.Dataset, metadata: dict[str, Any]) -> None:
    dset.attrs[METADATA_ATTR] = json_text(metadata, sort_keys=True)
    group = dset.parent
    for key in CALIBRATION_KEYS:
        value = metadata.get(key)
        if isinstance(value, str | int | float | bool | np.generic):
            group.attrs[key] = value


def json_text(value: Any, **kwargs: Any) -> str:
    """JSON that strict parsers read too: NaN and infinities (an unknown rotation, an unmasked radius) become
    null, as Python's json would otherwise write the non-standard ``NaN`` / ``Infinity``."""
    return json.dumps(_finite(value), default=jsonable, allow_nan=False, **kwargs)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return _finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def jsonable(value: Any) -> Any:
    """numpy scalars and arrays into plain JSON types; anything else by its repr."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)
