"""A cube's metadata in HDF5: the source's metadata as strict JSON on the dataset, its scalar calibration as
attributes beside it, and read back (``store.write.write_hdf5`` and the archive sink write it)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.calibration import CALIBRATION_KEYS
from stempress.data.hdf5 import STUDY_EMD_PATH

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


def read_metadata(path: Path | str, dataset_path: str | None = None) -> dict[str, Any]:
    """The metadata ``write_hdf5`` stored with a cube (empty when the file has none); by default the cube is the
    EMD layout's, else the study's path."""
    from stempress.data.emd import EMD_DATA_PATH

    with h5py.File(path, "r") as f:
        path_in_file = dataset_path or (EMD_DATA_PATH if EMD_DATA_PATH in f else STUDY_EMD_PATH)
        raw = f[path_in_file].attrs.get(METADATA_ATTR)
    if raw is None:
        return {}
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
