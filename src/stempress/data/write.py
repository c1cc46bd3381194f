"""Stream any source into an HDF5 file block by block, so cubes larger than memory can be written.

The default layout is EMD 1.0 as emdfile/py4DSTEM write it (``stempress.data.emd``: root attributes, root
group, DataCube with dims and calibration), the layout ``compress`` writes, so ``py4DSTEM.read`` and HyperSpy's
EMD reader open what ``stempress simulate`` writes; ``layout="plain"`` writes only the dataset (the study's path
by default). The file appears under its final name only when complete (temporary name in the same directory,
then ``os.replace``), so a crash or Ctrl-C never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.atomic import atomic_output
from stempress.data.base import Dataset4D, check_shape_dtype, iter_blocks, nbytes, rows_for_budget
from stempress.data.hdf5 import CALIBRATION_KEYS, STUDY_EMD_PATH
from stempress.errors import StempressError

#: Attribute holding the source's whole metadata as a JSON string.
METADATA_ATTR = "stempress_metadata"

Progress = Callable[[int, int], None]


def write_hdf5(
    source: Dataset4D,
    out: Path | str,
    *,
    layout: str = "emd",
    dataset_path: str | None = None,
    chunks: tuple[int, ...] | None = None,
    compression_kwargs: Mapping[str, Any] | None = None,
    truth: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write ``source`` to ``out`` (HDF5) in ``layout`` (``emd`` or ``plain``) and return the path.

    ``dataset_path`` applies to the plain layout (default: the study's path). ``chunks`` is capped to the
    cube; ``compression_kwargs`` go to ``create_dataset`` as they are (e.g. ``hdf5plugin.Blosc(...)``). With
    ``truth=True`` the source's ``expected_rows`` is stored as float32 in ``expected`` beside the data (EMD
    readers read only ``data``). Blocks hold a whole number of chunk rows, so no chunk is compressed twice.
    ``progress(bytes_done, bytes_total)`` is called after each block.
    """
    from stempress.data.emd import data_path  # the store owns the layouts; it builds on this module's helpers

    out = Path(out)
    data_path(layout, dataset_path)  # an unknown layout or a misplaced path is refused before any work
    if truth and not callable(getattr(source, "expected_rows", None)):
        raise StempressError(f"source {source.name!r} has no expected-count map; drop --truth")
    shape = check_shape_dtype(tuple(source.shape), np.dtype(source.dtype), source.name)
    if chunks is not None:
        if len(chunks) != 4 or min(chunks) < 1:
            raise StempressError(f"chunks {tuple(chunks)} must be 4 positive sizes, like (16, 16, 128, 128)")
        chunks = tuple(min(int(c), n) for c, n in zip(chunks, shape, strict=True))
    with atomic_output(out, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        _fill(f, source, shape, (layout, dataset_path), chunks, dict(compression_kwargs or {}), truth, progress)
    return out


def _fill(f: h5py.File, source: Dataset4D, shape: tuple[int, int, int, int], where: tuple[str, str | None],
          chunks: tuple[int, ...] | None, kwargs: dict[str, Any], truth: bool,
          progress: Progress | None) -> None:
    from stempress.data.emd import prepare_layout, write_source_metadata

    layout, dataset_path = where
    group, name = prepare_layout(f, layout, source.metadata, dataset_path)
    dset = group.create_dataset(name, shape=shape, dtype=np.dtype(source.dtype), chunks=chunks, **kwargs)
    expected = None
    if truth:
        expected = group.create_dataset("expected", shape=shape, dtype=np.float32, chunks=dset.chunks, **kwargs)
    multiple = dset.chunks[0] if dset.chunks else 1
    rows = rows_for_budget(source, multiple=multiple)
    total = nbytes(source) + (int(np.prod(shape)) * 4 if truth else 0)
    done = 0
    for block in iter_blocks(source, rows):
        if block.data.shape != (block.stop - block.start, *shape[1:]):
            raise StempressError(f"source {source.name!r} returned a block of shape {block.data.shape} "
                                 f"for rows {block.start}..{block.stop}; fix the source's read_rows")
        dset[block.start:block.stop] = block.data
        done += block.data.nbytes
        if expected is not None:
            exp = source.expected_rows(block.start, block.stop)  # type: ignore[attr-defined]
            expected[block.start:block.stop] = exp
            done += block.data.size * 4
        if progress is not None:
            progress(done, total)
    # after the data: sources may fill in metadata while generating (e.g. clipping counts)
    write_source_metadata(dset, layout, dict(source.metadata))


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
