"""HDF5 / EMD 1.0 source: one 4-D dataset (or a frame stack plus a scan shape) read a few scan rows at a time.

Auto-detection follows the layouts the field writes (see docs/FORMATS.md): the study's EMD 1.0 path,
emdfile/py4DSTEM ``DataCube`` groups (with their calibration), then "the only 4-D dataset". Dim vectors
beside any other cube (EMD 0.x as Prismatic and older py4DSTEM write it: ``dim1..dim4`` with ``name`` and
``units``, e.g. ``4DSTEM_simulation/data/datacubes/CBED_array_depth0000``) become its calibration. The
helpers here (``open_hdf5``, ``read_into``, ``dataset_filters``) are shared with the NXmx source so
every HDF5 failure reads the same way: one line naming the file, the problem and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.base import SourceBase, check_shape_dtype, checked_scan_shape, require_file
from stempress.data.calibration import CALIBRATION_KEYS, calibration_from_dims
from stempress.errors import StempressError

try:  # Registers Blosc, LZ4, Bitshuffle, Zstd, ... with HDF5; without it those chunks cannot be decoded.
    import hdf5plugin

    _PLUGIN_FILTERS = {code: name for name, code in hdf5plugin.FILTERS.items()}
except ImportError:  # pragma: no cover - a hard dependency; without it reads fail with a clear message
    hdf5plugin = None
    _PLUGIN_FILTERS = {}

#: Root group where stempress keeps what is not data (per-chunk checksums); never mistaken for a cube.
BOOKKEEPING_GROUP = "stempress"

#: Where the study's own writer put the cube.
STUDY_EMD_PATH = "/version_1/data/datacubes/datacube_000/data"
#: Prismatic's EMD 0.x root group (its 4-D output: ``data/datacubes/CBED_array_depthNNNN/data``).
PRISMATIC_ROOT = "4DSTEM_simulation"

#: Names for filter ids, so an error can say "bitshuffle (32008)" rather than a bare number.
FILTER_NAMES: dict[int, str] = {
    1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf",
    **_PLUGIN_FILTERS,
}

_LIST_MAX = 8  # entries shown when an error lists datasets, to keep the message one readable line


def one_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line (HDF5 messages can span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def as_python(value: Any) -> Any:
    """Attribute/scalar values as plain Python, so metadata survives JSON and comparisons."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [as_python(v) for v in value.tolist()]
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def attr_str(obj: h5py.HLObject, key: str) -> str | None:
    """A string attribute whether stored as bytes or str (writers differ)."""
    value = obj.attrs.get(key)
    return None if value is None else str(as_python(value))


def open_hdf5(path: Path) -> h5py.File:
    """Open read-only, turning HDF5's multi-line failures into one actionable line."""
    require_file(path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = one_line(exc)
        if "unable to lock file" in reason.lower():
            raise StempressError(
                f"{path}: the file is locked by another program ({reason}); "
                "close it there or set HDF5_USE_FILE_LOCKING=FALSE"
            ) from exc
        raise StempressError(
            f"{path}: not a readable HDF5 file (truncated or corrupt: {reason}); re-copy or re-export it"
        ) from exc


def dataset_filters(dset: h5py.Dataset) -> list[dict[str, Any]]:
    """The filter pipeline as stored in the file, with whether this process can decode each one."""
    plist = dset.id.get_create_plist()
    filters = []
    for i in range(plist.get_nfilters()):
        code, _flags, values, name = plist.get_filter(i)
        stored = name.decode("utf-8", "replace").split(";")[0].strip() if name else ""
        filters.append({
            "id": int(code),
            "name": FILTER_NAMES.get(int(code)) or stored or f"filter {code}",
            "options": [int(v) for v in values],
            "available": bool(h5py.h5z.filter_avail(code)),
        })
    return filters


def read_into(dset: h5py.Dataset, selection: slice, out: np.ndarray, where: str, what: str) -> None:
    """Read ``dset[selection]`` into ``out``; a failed decode becomes one line saying why and what to do."""
    if out.size == 0:
        return
    try:
        dset.read_direct(out, source_sel=np.s_[selection])
    except (OSError, RuntimeError) as exc:
        missing = [f for f in dataset_filters(dset) if not f["available"]]
        if missing:
            names = ", ".join(f"{f['name']} ({f['id']})" for f in missing)
            raise StempressError(
                f"{where}: cannot read {what}: HDF5 filter {names} is not available in this process; "
                "pip install hdf5plugin (and import hdf5plugin before reading)"
            ) from exc
        raise StempressError(
            f"cannot decode chunk at {what} of {where}: {one_line(exc)}; "
            "the file is corrupt or a filter is missing (pip install hdf5plugin)"
        ) from exc


def native_dtype(dtype: np.dtype) -> np.dtype:
    """Big-endian files are read as native numbers, so sinks see one byte order."""
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("=") if dtype.kind in "iuf" else dtype


def list_datasets(f: h5py.File) -> list[h5py.Dataset]:
    """Every data dataset in the file (links are not followed; stempress's own bookkeeping is not data)."""
    found: list[h5py.Dataset] = []
    f.visititems(lambda name, obj: found.append(obj)
                 if isinstance(obj, h5py.Dataset) and not name.startswith(f"{BOOKKEEPING_GROUP}/") else None)
    return found


def describe(dsets: list[h5py.Dataset]) -> str:
    """``/a (2, 3, 4, 5) float32, ...`` capped so an error stays one line."""
    shown = [f"{d.name} {tuple(d.shape)} {d.dtype}" for d in dsets[:_LIST_MAX]]
    if len(dsets) > _LIST_MAX:
        shown.append(f"... ({len(dsets) - _LIST_MAX} more)")
    return ", ".join(shown)


def _is_datacube_group(obj: Any) -> bool:
    return (
        isinstance(obj, h5py.Group)
        and attr_str(obj, "emd_group_type") == "array"
        and attr_str(obj, "python_class") == "DataCube"
        and isinstance(obj.get("data"), h5py.Dataset)
    )


def _emdfile_cubes(f: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    f.visititems(lambda _name, obj: found.append(obj["data"]) if _is_datacube_group(obj) else None)
    return [d for d in found if d.ndim == 4]


def _choose(f: h5py.File, path: Path, scan_shape: tuple[int, int] | None) -> tuple[h5py.Dataset, str]:
    """Auto-detect: study EMD path, emdfile DataCube, the only 4-D (with a scan shape, 3-D) dataset."""
    study = f.get(STUDY_EMD_PATH)
    if isinstance(study, h5py.Dataset):
        return study, "emd-study"
    cubes = _emdfile_cubes(f)
    if len(cubes) == 1:
        return cubes[0], "emd-emdfile"
    if len(cubes) > 1:
        raise StempressError(
            f"{path}: several emdfile DataCubes ({describe(cubes)}); pass the one to use with --dataset PATH"
        )
    everything = list_datasets(f)
    four_d = [d for d in everything if d.ndim == 4]
    if len(four_d) == 1:
        return four_d[0], "hdf5"
    if len(four_d) > 1:
        raise StempressError(
            f"{path}: several 4-D datasets ({describe(four_d)}); pass the one to use with --dataset PATH"
        )
    stacks = [d for d in everything if d.ndim == 3]
    if scan_shape is not None and len(stacks) == 1:
        return stacks[0], "hdf5"
    if scan_shape is not None and len(stacks) > 1:
        raise StempressError(
            f"{path}: several 3-D frame stacks ({describe(stacks)}); pass the one to use with --dataset PATH"
        )
    if not everything:
        raise StempressError(f"{path}: the file holds no datasets; point at the file that holds the data")
    hint = "; for a frame stack pass --dataset PATH and --scan-shape" if stacks else ""
    raise StempressError(f"{path}: no 4-D dataset; datasets in the file: {describe(everything)}{hint}")


def _named(f: h5py.File, path: Path, dataset: str) -> h5py.Dataset:
    """The dataset the user named, or an error listing what they could have named."""
    try:
        obj = f.get(dataset)
    except (KeyError, OSError, ValueError):
        obj = None
    if _is_datacube_group(obj):
        return obj["data"]
    if isinstance(obj, h5py.Dataset):
        return obj
    four_d = [d for d in list_datasets(f) if d.ndim == 4]
    available = f"4-D datasets in the file: {describe(four_d)}" if four_d else "the file has no 4-D dataset"
    kind = "is a group, not a dataset" if isinstance(obj, h5py.Group) else "does not exist"
    raise StempressError(f"{path}: dataset {dataset!r} {kind}; {available}")


def dim_vectors(group: h5py.Group, rank: int) -> list[dict[str, Any]] | None:
    """The 1-D ``dim`` datasets that label each axis of an EMD array (emdfile counts from ``dim0``, EMD 0.x and
    Prismatic from ``dim1``): name, units and values; None when the group lacks a numeric one for some axis."""
    for first in (0, 1):
        found = [group.get(f"dim{first + axis}") for axis in range(rank)]
        if all(isinstance(d, h5py.Dataset) and d.ndim == 1 and d.dtype.kind in "iuf" and d.size for d in found):
            return [{"name": attr_str(d, "name"), "units": attr_str(d, "units"), "digits": _digits(d.dtype),
                     "values": [float(v) for v in np.asarray(d[()], np.float64)]} for d in found]
    return None


def _digits(dtype: np.dtype) -> int:
    """Significant decimal digits a dim's dtype holds (float32: 6), so a step is not quoted beyond them."""
    return int(np.finfo(dtype).precision) if dtype.kind == "f" else 15


def _prismatic_parameters(f: h5py.File) -> dict[str, Any]:
    """Prismatic's simulation parameters (attributes under its metadata group, its short names: E in keV, ...)."""
    group = f.get(f"{PRISMATIC_ROOT}/metadata/metadata_0/original/simulation_parameters")
    if not isinstance(group, h5py.Group):
        return {}
    return {key: as_python(value) for key, value in group.attrs.items()}


def _dim_metadata(dset: h5py.Dataset, fmt: str) -> dict[str, Any]:
    """Dims and the calibration they imply for a cube outside emdfile's tree (EMD 0.x, Prismatic), if labelled."""
    dims = dim_vectors(dset.parent, dset.ndim) if dset.ndim == 4 else None
    if dims is None:
        return {}
    found: dict[str, Any] = {"dims": dims, "calibration": calibration_from_dims(dims, dset.shape)}
    if fmt == "emd-prismatic":
        found["simulation_parameters"] = _prismatic_parameters(dset.file)
    return found


def _emdfile_metadata(dset: h5py.Dataset) -> dict[str, Any]:
    """Dims and calibration as py4DSTEM stores them beside the DataCube, so conversions keep them."""
    group = dset.parent
    dims = dim_vectors(group, dset.ndim) or []
    calibration: dict[str, Any] = {}
    for holder in (group, group.parent):
        cal = holder.get("metadatabundle/calibration")
        if isinstance(cal, h5py.Group):
            for key, item in cal.items():
                if not key.startswith("_") and isinstance(item, h5py.Dataset) and item.ndim == 0:
                    calibration[key] = as_python(item[()])
            break
    root = dset.file
    emd = {k: as_python(root.attrs[k]) for k in ("version_major", "version_minor", "authoring_program")
           if k in root.attrs}
    return {"dims": dims, "calibration": calibration, "emd": emd}


def _group_calibration(dset: h5py.Dataset) -> dict[str, Any]:
    """The calibration attributes a stempress write left beside the data, so a written cube keeps its mrad."""
    attrs = dset.parent.attrs
    return {key: as_python(attrs[key]) for key in CALIBRATION_KEYS if key in attrs}


class Hdf5Source(SourceBase):
    """A 4-D HDF5 dataset (EMD 1.0 or plain); with ``scan_shape``, a 3-D frame stack viewed as 4-D."""

    def __init__(self, path: str | Path, dataset: str | None = None,
                 scan_shape: tuple[int, int] | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self._file = open_hdf5(self.path)
        try:
            self._setup(dataset, scan_shape)
        except BaseException:
            self._file.close()
            raise

    def _setup(self, dataset: str | None, scan_shape: tuple[int, int] | None) -> None:
        if dataset is None:
            dset, fmt = _choose(self._file, self.path, scan_shape)
        else:
            dset = _named(self._file, self.path, dataset)
            fmt = ("emd-study" if dset.name == STUDY_EMD_PATH
                   else "emd-emdfile" if _is_datacube_group(dset.parent) else "hdf5")
        if fmt == "hdf5" and dset.name.startswith(f"/{PRISMATIC_ROOT}/"):
            fmt = "emd-prismatic"
        self._dset = dset
        self.dataset_path = dset.name
        self._where = f"{self.path}:{dset.name}"
        self.dtype = native_dtype(dset.dtype)
        self._stack = dset.ndim == 3 and scan_shape is not None
        if self._stack:
            n_frames = dset.shape[0]
            sy, sx = checked_scan_shape(scan_shape, n_frames, str(self._where))  # type: ignore[arg-type]
            shape: tuple[int, ...] = (sy, sx, *dset.shape[1:])
        else:
            shape = dset.shape
        self.shape = check_shape_dtype(shape, self.dtype, self._where)
        if scan_shape is not None and tuple(int(v) for v in scan_shape) != self.shape[:2]:
            raise StempressError(
                f"{self._where}: --scan-shape {tuple(scan_shape)} does not match the dataset's scan shape "
                f"{self.shape[:2]}; drop --scan-shape"
            )
        self.metadata: dict[str, Any] = {
            "format": fmt,
            "file": str(self.path),
            "dataset_path": dset.name,
            "chunks": list(dset.chunks) if dset.chunks else None,
            "compression": dset.compression,
            "filters": dataset_filters(dset),
        }
        if self._stack:
            self.metadata["frame_stack"] = True
        if fmt == "emd-emdfile":
            self.metadata.update(_emdfile_metadata(dset))
        else:
            self.metadata.update(_group_calibration(dset))
            self.metadata.update(_dim_metadata(dset, fmt))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows ``[start, stop)``; only the chunks those rows touch are read."""
        start, stop = self.check_rows(start, stop)
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        what = f"rows {start}..{stop}"
        if self._stack:
            sx = self.shape[1]
            frames = out.reshape(-1, *self.shape[2:])
            read_into(self._dset, slice(start * sx, stop * sx), frames, self._where, what)
        else:
            read_into(self._dset, slice(start, stop), out, self._where, what)
        return out

    def close(self) -> None:
        """Release the file handle (safe to call twice)."""
        if self._file.id.valid:
            self._file.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # h5py handles cannot be pickled; a worker process reopens the same dataset by path instead.
        scan = self.shape[:2] if self._stack else None
        return (type(self), (self.path, self.dataset_path, scan))

    def __repr__(self) -> str:
        return f"Hdf5Source({str(self.path)!r}, {self.dataset_path!r}, {self.shape}, {self.dtype})"
