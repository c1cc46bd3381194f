"""Reduced outputs in one HDF5 file that stempress, py4DSTEM and HyperSpy each open, with the provenance.

Each output array is stored once, at its stempress name; the other two names are HDF5 soft links to it (soft,
so the array has one home: a tree walk such as h5py's ``visit`` meets it there, and each link names it):

- ``/reduced/<target>/<output>``: stempress's own index, read back by ``read_reduced``;
- ``/reduced_root/<target>/<output>/data``: an EMD 1.0 tree as emdfile writes one, so ``py4DSTEM.read(path)``
  gives a Root holding one Node per target and under it a RealSlice (scan image), DiffractionSlice (mean
  pattern) or Array (radial profiles) per output; the root calibration carries the scan and detector pixel
  sizes and the beam centre (``qx0_mean``/``qy0_mean``), the root metadata the provenance. Each array's
  ``dim<n>`` is calibrated too, but py4DSTEM 0.14 reads dims only for an Array: a RealSlice or DiffractionSlice
  comes back with pixel-index dims (as py4DSTEM's own saved virtual images do) and its calibration is its
  ``.calibration`` (the root's), which ``py4DSTEM.show`` uses for scale bars;
- ``/Experiments/<target> <output>/data``: HyperSpy's hspy layout, one signal per output with calibrated axes
  and the provenance in ``original_metadata`` (``hs.load(path, file_format="hspy")``: several hdf5 readers
  claim ``.h5``; ``rsciio.hspy.file_reader(path)``; ``stempress.store.readers`` says why, and ``reduce``
  prints the call).

Why one file for all three: reduced outputs are small, the links cost nothing, and a colleague opens the
result in the tool they already use with no stempress installed. The root attribute ``stempress_provenance``
(JSON) is the record: source path and sha256, targets, parameters, calibration, software versions, time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.base import Dataset4D, require_file
from stempress.data.calibration import Calibration
from stempress.data.emd import DIM_NAMES, create_emd_root, metadata_item, write_emd_header
from stempress.data.write import json_text
from stempress.errors import StempressError
from stempress.reduce.diffraction import RadialProfile
from stempress.reduce.engine import Results
from stempress.reduce.protocol import OutputSpec, Reducer
from stempress.reduce.sufficiency import Target

log = logging.getLogger("stempress")

#: Group holding one subgroup per target: stempress's index of the file.
REDUCED_GROUP = "reduced"
PROVENANCE_ATTR = "stempress_provenance"
#: The EMD root group (emdfile names a tree's root ``<name>_root``).
EMD_ROOT = "reduced_root"
HSPY_GROUP = "Experiments"
#: hspy format version declared: older than RosettaSciIO's own (3.3), as nothing newer is used, so older
#: HyperSpy releases read the file without a "written by a newer version" warning.
HSPY_VERSION = "3.1"


@dataclass(frozen=True)
class Axis:
    """One array axis, linear: position ``i`` is ``offset + i * scale`` ``units``. ``navigate``: HyperSpy's
    navigation axis (the scan, when each position holds a profile) rather than a signal axis."""

    name: str
    size: int
    scale: float = 1.0
    offset: float = 0.0
    units: str = ""
    navigate: bool = False


@dataclass(frozen=True)
class Output:
    """One array of one target, with what the readers need to label it."""

    target: Target
    key: str
    data: np.ndarray
    spec: OutputSpec
    axes: tuple[Axis, ...]

    @property
    def title(self) -> str:
        return f"{self.target.label} {self.key}"

    @property
    def py4dstem_class(self) -> str:
        """A scan-shaped image is a RealSlice, a detector-shaped one a DiffractionSlice, anything else an Array."""
        if self.data.ndim == 2 and self.spec.kind == "position":
            return "RealSlice"
        if self.data.ndim == 2 and self.spec.kind == "pixel":
            return "DiffractionSlice"
        return "Array"


def derived_values(targets: Sequence[Target], results: Results) -> dict[str, dict[str, Any]]:
    """The scalars a reducer finished with besides the arrays a target keeps (the CoM's fitted scan/detector
    rotation, its mask radius): small, and what a reader needs to use the arrays (the DPC figure's rotation)."""
    found: dict[str, dict[str, Any]] = {}
    for target in targets:
        kept = set(target.keys())
        values = {k: np.asarray(v).item() for k, v in results[target.label].items()
                  if k not in kept and np.ndim(v) == 0}
        if values:
            found[target.label] = values
    return found


def target_outputs(target: Target, reducer: Reducer, result: Mapping[str, np.ndarray], source: Dataset4D,
                   calibration: Calibration) -> list[Output]:
    """The arrays a target keeps, each with its reducer's description and calibrated axes."""
    specs = reducer.outputs(tuple(source.shape), np.dtype(source.dtype))  # type: ignore[arg-type]
    return [Output(target, key, np.asarray(array), specs[key], output_axes(specs[key], np.shape(array), calibration,
                                                                            reducer))
            for key, array in target.extract(dict(result)).items()]


def output_axes(spec: OutputSpec, shape: tuple[int, ...], calibration: Calibration, reducer: Reducer
                ) -> tuple[Axis, ...]:
    """Scan axes in the R calibration, detector axes in the Q calibration about the beam centre, and any extra
    axis (a radial profile's rings) after them; when there are extra axes they are the signal."""
    leading = 2 if spec.kind in ("position", "pixel") else 0
    extra = shape[leading:]
    navigate = bool(extra)
    axes: list[Axis] = []
    if spec.kind == "position":
        axes += [Axis(name, size, calibration.r_pixel_size, 0.0, calibration.r_units, navigate)
                 for name, size in zip(DIM_NAMES[:2], shape[:2], strict=True)]
    elif spec.kind == "pixel":
        q = calibration.q_pixel_size
        axes += [Axis(name, size, q, -centre * q, calibration.q_units, navigate)
                 for name, size, centre in zip(DIM_NAMES[2:], shape[:2], (calibration.centre_y, calibration.centre_x),
                                               strict=True)]
    for n, size in enumerate(extra):
        axes.append(_ring_axis(reducer, size, calibration) if isinstance(reducer, RadialProfile)
                    else Axis(f"dim{leading + n}", size))
    return tuple(axes)


def _ring_axis(reducer: RadialProfile, size: int, calibration: Calibration) -> Axis:
    """Ring centres, in mrad where the detector is calibrated in angles, else pixels."""
    edges = reducer.edges(calibration.det_shape or (1, 1), calibration)
    step = float(edges[1] - edges[0]) * (calibration.q_pixel_size if calibration.angular else 1.0)
    return Axis("r", size, step, step / 2, calibration.angle_units)


# -- writing ----------------------------------------------------------------------------------------------
def write_reduced(f: h5py.File, outputs: Sequence[Output], record: Mapping[str, Any],
                  calibration: Calibration) -> None:
    """All three views of ``outputs`` into the open (empty) file ``f``. Groups keep creation order, so every
    reader lists the targets as they were given."""
    f.attrs[PROVENANCE_ATTR] = json_text(record)
    record = json.loads(f.attrs[PROVENANCE_ATTR])  # plain JSON types from here on
    write_emd_header(f)
    f.attrs["file_format"] = "HyperSpy"
    f.attrs["file_format_version"] = HSPY_VERSION
    index = f.create_group(REDUCED_GROUP, track_order=True)
    root = _emd_root(f, calibration, record)
    experiments = f.create_group(HSPY_GROUP, track_order=True)
    for out in outputs:
        name = _safe(out.target.label)
        if name not in index:
            group = index.create_group(name)
            group.attrs["target"] = out.target.label
            group.attrs["assumes"] = json.dumps(list(out.target.assumes))
            _emd_node(root, name, out.target)
        data = index[name].create_dataset(out.key, data=out.data)
        data.attrs["units"] = out.spec.units  # emdfile reads an Array's units here; the links share it
        _emd_array(root[name], out, data)
        _hspy_signal(experiments, out, data, record)


def _safe(name: str) -> str:
    """An HDF5 link name: no '/'."""
    return name.replace("/", "_")


def _emd_root(f: h5py.File, calibration: Calibration, record: Mapping[str, Any]) -> h5py.Group:
    """The EMD root with py4DSTEM's ``calibration`` and the provenance as root metadata."""
    root = create_emd_root(f, EMD_ROOT, track_order=True)
    bundle = root.create_group("metadatabundle")
    bundle.attrs["emd_group_type"] = "metadatabundle"
    # the archive's fields, and the centre the reduction used even when it is the detector's middle
    fields: dict[str, Any] = {**calibration.emd_fields(), "qx0_mean": float(calibration.centre_y),  # type: ignore[arg-type]
                              "qy0_mean": float(calibration.centre_x)}  # type: ignore[arg-type]
    _emd_metadata(bundle, "calibration", fields, python_class="Calibration")
    _emd_metadata(bundle, PROVENANCE_ATTR, {**record, "json": json.dumps(record)})
    return root


def _emd_node(root: h5py.Group, name: str, target: Target) -> None:
    node = root.create_group(name, track_order=True)
    node.attrs["emd_group_type"] = "node"
    node.attrs["python_class"] = "Node"
    bundle = node.create_group("metadatabundle")
    bundle.attrs["emd_group_type"] = "metadatabundle"
    _emd_metadata(bundle, "stempress_target", {"label": target.label, "kind": target.kind,
                                               "params": dict(target.params), "assumes": list(target.assumes)})


def _emd_array(node: h5py.Group, out: Output, data: h5py.Dataset) -> None:
    """An emdfile Array group: ``data`` (linked) and ``dim<n>`` holding a linear axis's first two values."""
    group = node.create_group(out.key)
    group.attrs["emd_group_type"] = "array"
    group.attrs["python_class"] = out.py4dstem_class
    group["data"] = h5py.SoftLink(data.name)
    for n, axis in enumerate(out.axes):
        dim = group.create_dataset(f"dim{n}", data=np.array([axis.offset, axis.offset + axis.scale], np.float64))
        dim.attrs["name"] = axis.name
        dim.attrs["units"] = axis.units


def _emd_metadata(bundle: h5py.Group, name: str, items: Mapping[str, Any], python_class: str = "Metadata") -> None:
    group = bundle.create_group(name)
    group.attrs["emd_group_type"] = "metadata"
    group.attrs["python_class"] = python_class
    _emd_items(group, items)


def _emd_items(group: h5py.Group, items: Mapping[str, Any]) -> None:
    """emdfile Metadata items: dicts nest, numeric lists become arrays, other lists JSON text."""
    for key, value in items.items():
        key = _safe(str(key))
        if isinstance(value, Mapping):
            sub = group.create_group(key)
            sub.attrs["type"] = b"dict"
            _emd_items(sub, value)
        elif value is None:
            group.create_dataset(key, data=b"_None").attrs["type"] = b"None"
        elif isinstance(value, list | tuple):
            if _numbers(value):
                group.create_dataset(key, data=np.asarray(value)).attrs["type"] = b"array"
            else:
                metadata_item(group, key, json_text(value))
        else:
            metadata_item(group, key, value)


def _numbers(values: Sequence[Any]) -> bool:
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _hspy_signal(experiments: h5py.Group, out: Output, data: h5py.Dataset, record: Mapping[str, Any]) -> None:
    """One hspy signal: ``data`` (linked), ``axis-<n>`` in array order, metadata and original_metadata."""
    group = experiments.create_group(_safe(out.title))
    group["data"] = h5py.SoftLink(data.name)
    for n, axis in enumerate(out.axes):
        ax = group.create_group(f"axis-{n}")
        ax.attrs.update({"_type": "UniformDataAxis", "name": axis.name, "size": np.int64(axis.size),
                         "scale": float(axis.scale), "offset": float(axis.offset), "units": axis.units,
                         "navigate": np.bool_(axis.navigate), "is_binned": np.bool_(False)})
    quantity = out.spec.description or out.key
    source = record.get("source", {})
    _hspy_items(group.create_group("metadata"), {
        "General": {"title": out.title, "original_filename": Path(source["path"]).name if source.get("path")
                    else str(source.get("name", ""))},
        "Signal": {"signal_type": "", "quantity": f"{quantity} ({out.spec.units})" if out.spec.units else quantity}})
    _hspy_items(group.create_group("original_metadata"), {"stempress": {
        "target": out.target.label, "output": out.key, "units": out.spec.units,
        "description": out.spec.description, "provenance": record}})


def _hspy_items(group: h5py.Group, items: Mapping[str, Any]) -> None:
    """HyperSpy's dictionary layout: dicts are groups, scalars attributes, None ``'_None_'``."""
    for key, value in items.items():
        key = _safe(str(key))
        if isinstance(value, Mapping):
            _hspy_items(group.create_group(key), value)
        elif value is None:
            group.attrs[key] = "_None_"
        elif isinstance(value, list | tuple):
            if not value:
                group.attrs[f"_list_empty_{key}"] = "_None_"
            elif _numbers(value):
                group.attrs[key] = np.asarray(value)
            else:
                group.attrs[key] = json_text(value)
        else:
            group.attrs[key] = value


# -- reading ----------------------------------------------------------------------------------------------
def read_reduced(path: Path | str) -> tuple[Results, dict[str, Any]]:
    """``({target label: {output: array}}, provenance)`` from a file ``reduce_to_file`` wrote, in the order the
    targets were given; the arrays come back exactly as computed."""
    path = require_file(Path(path))
    try:
        f = h5py.File(path, "r")
    except (FileNotFoundError, OSError) as exc:
        raise StempressError(f"cannot open {path} as an HDF5 file ({exc}); give a file `stempress reduce` wrote") \
            from None
    with f:
        raw = f.attrs.get(PROVENANCE_ATTR)
        if raw is None or not isinstance(f.get(REDUCED_GROUP), h5py.Group):
            raise StempressError(f"{path} is not a reduced file: it lacks the /{REDUCED_GROUP} group or the "
                                 f"{PROVENANCE_ATTR} attribute that `stempress reduce` writes")
        record = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        groups = {str(g.attrs.get("target", name)): g for name, g in f[REDUCED_GROUP].items()}
        order = [t for t in record.get("targets", []) if t in groups] + [t for t in groups
                                                                         if t not in record.get("targets", [])]
        listed = record.get("parameters", {}).get("outputs", {})
        results: Results = {}
        for label in order:
            group = groups[label]
            keys = [k for k in listed.get(label, []) if k in group] + [k for k in group
                                                                       if k not in listed.get(label, [])]
            results[label] = {k: group[k][()] for k in keys}
    return results, record


def reduced_calibration(record: Mapping[str, Any]) -> Calibration:
    """The calibration a reduction used, from its provenance (JSON turned the detector shape into a list)."""
    fields = dict(record.get("calibration") or {})
    if not fields:
        raise StempressError("the provenance records no calibration; the reduced file is incomplete")
    det = fields.get("det_shape")
    fields["det_shape"] = None if det is None else (int(det[0]), int(det[1]))
    return Calibration(**fields)
