"""Where a stored cube lives in its HDF5 file: EMD 1.0 as emdfile/py4DSTEM write it, or a bare dataset path.

The ``emd`` layout copies what emdfile 0.0.x writes for a py4DSTEM ``DataCube`` (attribute names, string
types, the ``_root_treepath``/``_target_paths`` calibration links, linear dims stored as their first two
values), so ``py4DSTEM.read`` and RosettaSciIO's ``emd`` reader open our files with their calibration and no
stempress installed. Only the ``data`` dataset is left to the caller, who creates it with chunks and filters.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from stempress.data.calibration import Calibration
from stempress.data.hdf5 import STUDY_EMD_PATH
from stempress.data.write import METADATA_ATTR, json_text, write_metadata
from stempress.errors import StempressError

Layout = Literal["emd", "plain"]
LAYOUTS: tuple[str, ...] = ("emd", "plain")

#: Group names emdfile gives a DataCube called ``datacube`` saved on its own (the real example's names).
EMD_ROOT = "datacube_root"
EMD_CUBE = "datacube"
EMD_DATA_PATH = f"/{EMD_ROOT}/{EMD_CUBE}/data"
#: The study's path is the plain layout's default, so the study's own readers find the cube.
PLAIN_DATA_PATH = STUDY_EMD_PATH

AUTHORING_PROGRAM = "stempress"
#: Attribute holding the codec's configuration (``Codec.config()``) as JSON, so a reader knows what wrote it.
CODEC_ATTR = "stempress_codec"
#: py4DSTEM's DataCube dim names, in array order (scan_y, scan_x, det_y, det_x).
DIM_NAMES = ("Rx", "Ry", "Qx", "Qy")
#: Source metadata keys the EMD layout stores natively (calibration group, dims, file attrs), not in the JSON.
NATIVE_KEYS = ("calibration", "dims", "emd")
def data_path(layout: str, dataset_path: str | None = None) -> str:
    """Where the cube's ``data`` goes: fixed for ``emd`` (readers look there), ``dataset_path`` or the study's
    path for ``plain``."""
    if layout == "emd":
        if dataset_path not in (None, EMD_DATA_PATH, EMD_DATA_PATH.lstrip("/")):
            raise StempressError(f"dataset path {dataset_path!r} applies to the plain layout only; "
                                 "drop it or use layout='plain'")
        return EMD_DATA_PATH
    if layout == "plain":
        path = dataset_path or PLAIN_DATA_PATH
        return path if path.startswith("/") else "/" + path
    raise StempressError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def prepare_layout(f: h5py.File, layout: str, metadata: Mapping[str, Any],
                   dataset_path: str | None = None) -> tuple[h5py.Group, str]:
    """Write everything except the cube and return (group to create ``data`` in, its name there)."""
    path = data_path(layout, dataset_path)
    if layout == "emd":
        return write_emd_tree(f, Calibration.from_metadata(metadata)), "data"
    parent, _, name = path.rpartition("/")
    return f.require_group(parent or "/"), name


def write_emd_header(f: h5py.File) -> None:
    """The file attributes that make an HDF5 file EMD 1.0 for emdfile (and so py4DSTEM)."""
    f.attrs["emd_group_type"] = "file"
    f.attrs["version_major"] = np.int64(1)
    f.attrs["version_minor"] = np.int64(0)
    f.attrs["UUID"] = str(uuid.uuid4())
    f.attrs["authoring_program"] = AUTHORING_PROGRAM
    f.attrs["authoring_user"] = ""


def create_emd_root(f: h5py.File, name: str, **kwargs: object) -> h5py.Group:
    """An emdfile root group (``kwargs`` go to ``create_group``, e.g. ``track_order``)."""
    root = f.create_group(name, **kwargs)
    root.attrs["emd_group_type"] = "root"
    root.attrs["python_class"] = "Root"
    return root


def write_emd_tree(f: h5py.File, calibration: Calibration) -> h5py.Group:
    """Root attributes, root group, calibration and the DataCube group with its dims; returns the DataCube group."""
    write_emd_header(f)
    root = create_emd_root(f, EMD_ROOT)
    cube = root.create_group(EMD_CUBE)
    cube.attrs["emd_group_type"] = "array"
    cube.attrs["python_class"] = "DataCube"
    steps = (calibration.r_pixel_size,) * 2 + (calibration.q_pixel_size,) * 2
    units = (calibration.r_units,) * 2 + (calibration.q_units,) * 2
    for n, (name, step, unit) in enumerate(zip(DIM_NAMES, steps, units, strict=True)):
        # emdfile keeps only [start, start + step] of a linear dim and expands it on reading; two values
        # also keep a 1-long axis's step (RosettaSciIO takes the scale from the difference)
        dim = cube.create_dataset(f"dim{n}", data=np.array([0.0, step], dtype=np.float64))
        dim.attrs["name"] = name
        dim.attrs["units"] = unit
    _write_calibration(root, calibration)
    return cube


def _write_calibration(root: h5py.Group, calibration: Calibration) -> None:
    """``metadatabundle/calibration`` typed as emdfile's Metadata writer types it (bytes strings, 'type' tags)."""
    bundle = root.create_group("metadatabundle")
    bundle.attrs["emd_group_type"] = "metadatabundle"
    cal = bundle.create_group("calibration")
    cal.attrs["emd_group_type"] = "metadata"
    cal.attrs["python_class"] = "Calibration"
    for key, value in calibration.emd_fields().items():
        metadata_item(cal, key, value)
    metadata_item(cal, "_root_treepath", "")
    targets = cal.create_group("_target_paths")
    targets.attrs["type"] = b"list_of_strings"
    targets.attrs["length"] = np.int64(1)
    targets.create_dataset("0", data=f"/{EMD_CUBE}".encode())


def metadata_item(group: h5py.Group, key: str, value: str | int | float | bool) -> None:
    """One emdfile Metadata item: a scalar dataset tagged with its type, as emdfile's writer tags it."""
    if isinstance(value, str):
        group.create_dataset(key, data=value.encode("utf-8")).attrs["type"] = b"string"
    elif isinstance(value, bool):
        group.create_dataset(key, data=value, dtype=bool).attrs["type"] = b"bool"
    else:
        group.create_dataset(key, data=value, dtype=type(value)).attrs["type"] = b"number"


def write_source_metadata(dset: h5py.Dataset, layout: str, metadata: Mapping[str, Any],
                          codec_config: Mapping[str, Any] | None = None) -> None:
    """After the data (sources may add metadata while producing it): the source's metadata as JSON on the
    dataset, and the codec configuration for provenance. The EMD layout leaves out what it stores natively."""
    md = dict(metadata)
    if layout == "emd":
        for key in NATIVE_KEYS:
            md.pop(key, None)
        dset.attrs[METADATA_ATTR] = json_text(md, sort_keys=True)
        dset.attrs["units"] = "pixel intensity"
    else:
        write_metadata(dset, md)
    if codec_config is not None:
        dset.attrs[CODEC_ATTR] = json_text(dict(codec_config), sort_keys=True)


def read_metadata(path: Path | str, dataset_path: str | None = None) -> dict[str, Any]:
    """The metadata ``write_metadata`` stored with a cube (empty when the file has none); by default the cube is the
    EMD layout's, else the study's path."""
    with h5py.File(path, "r") as f:
        path_in_file = dataset_path or (EMD_DATA_PATH if EMD_DATA_PATH in f else STUDY_EMD_PATH)
        raw = f[path_in_file].attrs.get(METADATA_ATTR)
    if raw is None:
        return {}
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
