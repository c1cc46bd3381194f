"""Stream any source into an HDF5 file block by block, so cubes larger than memory can be written.

The file appears under its final name only when complete (temporary name in the same directory, then
``os.replace``), so a crash or Ctrl-C never leaves a truncated file that looks finished.
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
    dataset_path: str = STUDY_EMD_PATH,
    chunks: tuple[int, ...] | None = None,
    compression_kwargs: Mapping[str, Any] | None = None,
    truth: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write ``source`` to ``out`` (HDF5) and return the path.

    ``chunks`` is capped to the cube; ``compression_kwargs`` go to ``create_dataset`` as they are
    (e.g. ``hdf5plugin.Blosc(...)``). With ``truth=True`` the source's ``expected_rows`` is stored as
    float32 in ``expected`` beside the data. Blocks hold a whole number of chunk rows, so no chunk is
    compressed twice. ``progress(bytes_done, bytes_total)`` is called after each block.
    """
    out = Path(out)
    if truth and not callable(getattr(source, "expected_rows", None)):
        raise StempressError(f"source {source.name!r} has no expected-count map; drop --truth")
    shape = check_shape_dtype(tuple(source.shape), np.dtype(source.dtype), source.name)
    if chunks is not None:
        if len(chunks) != 4 or min(chunks) < 1:
            raise StempressError(f"chunks {tuple(chunks)} must be 4 positive sizes, like (16, 16, 128, 128)")
        chunks = tuple(min(int(c), n) for c, n in zip(chunks, shape, strict=True))
    with atomic_output(out, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        _fill(f, source, shape, dataset_path, chunks, dict(compression_kwargs or {}), truth, progress)
    return out


def _fill(f: h5py.File, source: Dataset4D, shape: tuple[int, int, int, int], dataset_path: str,
          chunks: tuple[int, ...] | None, kwargs: dict[str, Any], truth: bool,
          progress: Progress | None) -> None:
    dset = f.create_dataset(dataset_path, shape=shape, dtype=np.dtype(source.dtype), chunks=chunks, **kwargs)
    expected = None
    if truth:
        sibling = dataset_path.rsplit("/", 1)[0] + "/expected" if "/" in dataset_path else "expected"
        expected = f.create_dataset(sibling, shape=shape, dtype=np.float32, chunks=dset.chunks, **kwargs)
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
    write_metadata(dset, dict(source.metadata))


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


def read_metadata(path: Path | str, dataset_path: str = STUDY_EMD_PATH) -> dict[str, Any]:
    """The metadata ``write_hdf5`` stored with a cube (empty when the file has none)."""
    with h5py.File(path, "r") as f:
        raw = f[dataset_path].attrs.get(METADATA_ATTR)
    if raw is None:
        return {}
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
