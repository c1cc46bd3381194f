"""A small file in the layout Prismatic 2.0 writes (EMD 0.9), for tests: no third-party data is shipped.

Layout as in Prismatic's ``src/fileIO.cpp`` (``setupOutputFile``, ``setup4DOutput``, ``setup2DOutput``,
``writeMetadata``): a ``4DSTEM_simulation`` group (int attributes ``version_major`` 0, ``version_minor`` 9,
``emd_group_type`` 2) with ``data/{datacubes,realslices,...}``, ``log`` and ``metadata/metadata_0/...``; the 4-D
output in ``data/datacubes/CBED_array_depth0000`` as float32 ``data`` of shape (Rx, Ry, Qx, Qy) chunked one
pattern per chunk, with ``dim1..dim4`` (float32 probe positions in Å and spatial frequencies in Å^-1; attributes
``name`` R_x/R_y/Q_x/Q_y and ``units`` [Å]/[Å^-1], fixed-length 256-byte strings); an annular image in
``data/realslices/annular_detector_depth0000``; simulation parameters as attributes with Prismatic's short names
(``E`` in keV, ``rx``/``ry`` probe steps in Å, ``sa`` semi-angle in mrad).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

#: The Si100 example's sampling as the issue quotes it: 0.5 nm probe steps, 0.184 nm^-1 detector pixels.
R_STEP_A = 5.0
Q_STEP_PER_A = 0.0184


def _text(obj: h5py.HLObject, name: str, value: str) -> None:
    """A scalar attribute as Prismatic's C++ writes it: fixed-length 256-byte C string (UTF-8 bytes)."""
    obj.attrs.create(name, np.bytes_(value.encode("utf-8")), dtype=h5py.string_dtype("ascii", 256))


def _dim(group: h5py.Group, n: int, values: np.ndarray, name: str, units: str) -> None:
    dim = group.create_dataset(f"dim{n}", data=values.astype(np.float32))
    _text(dim, "name", name)
    _text(dim, "units", units)


def write_prismatic(path: Path, cube: np.ndarray, r_step: float = R_STEP_A, q_step: float = Q_STEP_PER_A) -> Path:
    """Write ``cube`` (Rx, Ry, Qx, Qy) as Prismatic's 4-D output, with its annular image beside it."""
    nx, ny, qx, qy = cube.shape
    with h5py.File(path, "w") as f:
        sim = f.create_group("4DSTEM_simulation")
        for key, value in (("version_major", 0), ("version_minor", 9), ("version_release", 0),
                           ("emd_group_type", 2)):
            sim.attrs.create(key, value, dtype=np.int32)
        data = sim.create_group("data")
        for name in ("datacubes", "counted_datacubes", "diffractionslices", "realslices", "pointlists",
                     "pointlistarrays", "supergroups"):
            data.create_group(name)
        sim.create_group("log")
        meta = sim.create_group("metadata/metadata_0")
        for name in ("original/shortlist", "original/all", "microscope", "sample", "user", "calibration", "comments"):
            meta.create_group(name)
        params = meta.create_group("original/simulation_parameters")
        _text(params, "i", "SI100.XYZ")
        _text(params, "a", "p")
        for key, value in (("E", 300.0), ("rx", r_step), ("ry", r_step), ("sa", 20.0), ("px", 0.1), ("py", 0.1)):
            params.attrs.create(key, value, dtype=np.float32)

        xp, yp = np.arange(nx) * r_step, np.arange(ny) * r_step
        qxs, qys = (np.arange(qx) - qx // 2) * q_step, (np.arange(qy) - qy // 2) * q_step
        group = data["datacubes"].create_group("CBED_array_depth0000")
        group.attrs.create("emd_group_type", 1, dtype=np.int32)
        group.attrs.create("metadata", 0, dtype=np.int32)
        group.attrs.create("output_depth", 10.86, dtype=np.float32)
        group.create_dataset("data", data=cube.astype(np.float32), chunks=(1, 1, qx, qy))
        for n, (values, name, units) in enumerate(((xp, "R_x", "[Å]"), (yp, "R_y", "[Å]"), (qxs, "Q_x", "[Å^-1]"),
                                                   (qys, "Q_y", "[Å^-1]")), start=1):
            _dim(group, n, values, name, units)

        annular = data["realslices"].create_group("annular_detector_depth0000")
        annular.attrs.create("emd_group_type", 1, dtype=np.int32)
        annular.create_dataset("data", data=cube.sum(axis=(2, 3)).astype(np.float32))
        _dim(annular, 1, xp, "R_x", "[Å]")
        _dim(annular, 2, yp, "R_y", "[Å]")
    return path
