"""Dectris NXmx (ARINA/EIGER) source: a master whose ``/entry/data/data_NNNNNN`` links point at frame stacks.

The files hold frames, not a scan: the scan shape comes from the user, else from the ARINA scan
metadata sidecar (``<name>.h5`` beside ``<name>_master.h5``, group ``STEM Metadata``, the file
RosettaSciIO's arina reader also consults), else a perfect square (flagged as inferred).
Scan rows map to frame ranges that may straddle two data files.

Calibration (``metadata["calibration"]``, what ``compress`` writes as the EMD calibration): a detector pixel
subtends ``x_pixel_size / camera length`` rad, given in mrad; the camera length is the master's
``detector_distance`` when set, else the sidecar's nominal ``Camera Length`` (m). The beam energy
(``photon_energy``, else the sidecar's ``High Tension``) and its electron wavelength go beside it, so the angles
convert to spatial frequency (q = angle / wavelength). The scan pixel is the sidecar's ``Pixel Size`` in nm, as
RosettaSciIO and py4DSTEM read it. Nominal values: calibrate on a known pattern when angles must be exact.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stempress.data.base import SourceBase, check_shape_dtype, checked_scan_shape
from stempress.data.hdf5 import (
    as_python,
    attr_str,
    dataset_filters,
    native_dtype,
    one_line,
    open_hdf5,
    read_into,
)
from stempress.errors import StempressError

_DATA_LINK = re.compile(r"^data_\d{6}$")
_DETECTOR = "/entry/instrument/detector"


def is_nxmx_master(f: h5py.File) -> bool:
    """A master file: ``/entry/data`` holds ``data_NNNNNN`` external links (or is an NXdata of them)."""
    group = f.get("/entry/data")
    if not isinstance(group, h5py.Group):
        return False
    names = [k for k in group if _DATA_LINK.match(k)]
    if not names:
        return False
    if any(isinstance(group.get(k, getlink=True), h5py.ExternalLink) for k in names):
        return True
    return attr_str(group, "NX_class") == "NXdata"


def _scalars(group: h5py.Group) -> tuple[dict[str, Any], dict[str, str]]:
    """Scalar datasets of a group and their units (arrays such as masks stay in the file)."""
    values: dict[str, Any] = {}
    units: dict[str, str] = {}
    for key, item in group.items():
        if isinstance(item, h5py.Dataset) and item.ndim == 0:
            values[key] = as_python(item[()])
            unit = attr_str(item, "units")
            if unit:
                units[key] = unit
    return values, units


_METRES = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "nm": 1e-9}


def _metres(value: Any, unit: str | None) -> float | None:
    """A positive length in metres (NXmx writes units beside each value), else None."""
    scale = _METRES.get((unit or "m").strip())
    if scale is None or isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return None
    return float(value) * scale


def electron_wavelength_angstrom(energy_ev: float) -> float:
    """Relativistic de Broglie wavelength of an electron of kinetic energy ``energy_ev`` (300 keV: 0.01969 Å)."""
    from scipy.constants import c, e, h, m_e

    work = e * energy_ev
    return h / math.sqrt(2 * m_e * work * (1 + work / (2 * m_e * c**2))) * 1e10


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


def detector_calibration(detector: dict[str, Any], units: dict[str, str],
                         scan: dict[str, Any] | None) -> dict[str, Any]:
    """Q in mrad per pixel from pixel size and camera length, the beam energy, R from the ARINA sidecar, and the
    beam centre where the master sets one; only what the files actually give."""
    scan = scan or {}
    found: dict[str, Any] = {}
    pixel = _metres(detector.get("x_pixel_size"), units.get("x_pixel_size"))
    pixel_y = _metres(detector.get("y_pixel_size"), units.get("y_pixel_size"))
    length = _metres(detector.get("detector_distance"), units.get("detector_distance"))
    source = "detector_distance"
    if length is None:
        length, source = _metres(scan.get("Camera Length"), "m"), "sidecar Camera Length"
    if pixel and length and (pixel_y is None or math.isclose(pixel, pixel_y, rel_tol=1e-6)):
        found.update(Q_pixel_size=1000 * pixel / length, Q_pixel_units="mrad", camera_length_m=length,
                     camera_length_from=source, detector_pixel_size_m=pixel)
    energy = _positive(detector.get("photon_energy")) or _positive(scan.get("High Tension"))
    if energy:
        found.update(beam_energy_eV=energy, wavelength_A=electron_wavelength_angstrom(energy))
    step = _positive(scan.get("Pixel Size"))
    if step:
        found.update(R_pixel_size=step, R_pixel_units="nm")
    cx, cy = _positive(detector.get("beam_center_x")), _positive(detector.get("beam_center_y"))
    if cx and cy:
        found.update(qx0_mean=cy, qy0_mean=cx)  # py4DSTEM's qx runs along rows (det_y); NXmx's x along columns
    return found


def _sidecar_scan(master: Path) -> tuple[dict[str, Any], Path] | None:
    """ARINA's ``STEM Metadata`` attributes from ``<name>.h5`` beside ``<name>_master.h5``, if present."""
    if not master.name.endswith("_master.h5"):
        return None
    sidecar = master.with_name(master.name.removesuffix("_master.h5") + ".h5")
    if not sidecar.is_file():
        return None
    try:
        with h5py.File(sidecar, "r") as f:
            group = f.get("STEM Metadata")
            if not isinstance(group, h5py.Group):
                return None
            attrs = {}
            for key, value in group.attrs.items():
                value = as_python(value)
                attrs[key] = value[0] if isinstance(value, list) and len(value) == 1 else value
            return attrs, sidecar
    except OSError:
        return None


class NxmxSource(SourceBase):
    """Frames of all linked data files, in link order, viewed as ``(scan_y, scan_x, det_y, det_x)``."""

    def __init__(self, master_path: str | Path, scan_shape: tuple[int, int] | None = None) -> None:
        self.path = Path(master_path)
        self.name = self.path.stem.removesuffix("_master")
        self._file = open_hdf5(self.path)
        try:
            self._setup(scan_shape)
        except BaseException:
            self._file.close()
            raise

    def _setup(self, scan_shape: tuple[int, int] | None) -> None:
        f = self._file
        if not is_nxmx_master(f):
            raise StempressError(
                f"{self.path}: not an NXmx master file (no /entry/data/data_NNNNNN links); "
                "open it as plain HDF5"
            )
        group = f["/entry/data"]
        self._parts: list[tuple[int, h5py.Dataset]] = []  # (first frame, dataset)
        n_frames = 0
        frame_shape: tuple[int, ...] | None = None
        dtype: np.dtype | None = None
        for key in sorted(k for k in group if _DATA_LINK.match(k)):
            dset = self._open_part(group, key)
            where = f"{self.path}:/entry/data/{key}"
            if dset.ndim != 3:
                raise StempressError(f"{where}: expected a frame stack (n, H, W), got shape {dset.shape}; "
                                     "the data file is not NXmx")
            if frame_shape is None:
                frame_shape, dtype = tuple(dset.shape[1:]), dset.dtype
            elif tuple(dset.shape[1:]) != frame_shape or dset.dtype != dtype:
                raise StempressError(
                    f"{where}: frames {dset.shape[1:]} {dset.dtype} differ from the first data file's "
                    f"{frame_shape} {dtype}; the data files are from different acquisitions"
                )
            self._parts.append((n_frames, dset))
            n_frames += dset.shape[0]
        assert frame_shape is not None and dtype is not None
        self.n_frames = n_frames
        self.dtype = native_dtype(dtype)
        scan, source, sidecar = self._resolve_scan(scan_shape, n_frames)
        self.shape = check_shape_dtype((*scan, *frame_shape), self.dtype, str(self.path))
        self.metadata: dict[str, Any] = {
            "format": "nxmx",
            "file": str(self.path),
            "data_files": [str(Path(d.file.filename)) for _, d in self._parts],
            "n_frames": n_frames,
            "scan_shape_inferred": source == "square",
            "scan_shape_source": source,
            "chunks": list(self._parts[0][1].chunks) if self._parts[0][1].chunks else None,
            "filters": dataset_filters(self._parts[0][1]),
        }
        detector = f.get(_DETECTOR)
        if isinstance(detector, h5py.Group):
            values, units = _scalars(detector)
            specific = detector.get("detectorSpecific")
            if isinstance(specific, h5py.Group):
                more, more_units = _scalars(specific)
                values = {**more, **values}
                units = {**more_units, **units}
            self.metadata["detector"] = values
            self.metadata["detector_units"] = units
        if sidecar is not None:
            self.metadata["scan_metadata"] = sidecar
        calibration = detector_calibration(self.metadata.get("detector", {}), self.metadata.get("detector_units", {}),
                                           sidecar)
        if calibration:
            self.metadata["calibration"] = calibration

    def _open_part(self, group: h5py.Group, key: str) -> h5py.Dataset:
        link = group.get(key, getlink=True)
        try:
            dset = group[key]
        except (KeyError, OSError) as exc:
            target = link.filename if isinstance(link, h5py.ExternalLink) else key
            raise StempressError(
                f"{self.path}: cannot open data file {target} linked as /entry/data/{key} ({one_line(exc)}); "
                "keep the data files next to the master file"
            ) from exc
        if not isinstance(dset, h5py.Dataset):
            raise StempressError(
                f"{self.path}: /entry/data/{key} is not a dataset; the master file is malformed"
            )
        return dset

    def _resolve_scan(self, scan_shape: tuple[int, int] | None,
                      n_frames: int) -> tuple[tuple[int, int], str, dict[str, Any] | None]:
        found = _sidecar_scan(self.path)
        sidecar = found[0] if found else None
        if scan_shape is not None:
            sy, sx = checked_scan_shape(scan_shape, n_frames, str(self.path))  # type: ignore[arg-type]
            return (sy, sx), "user", sidecar
        if found:
            try:
                sy, sx = int(sidecar["NumPixelsY"]), int(sidecar["NumPixelsX"])  # type: ignore[index]
            except (KeyError, TypeError, ValueError):
                sy = sx = 0
            if sy > 0 and sx > 0 and sy * sx == n_frames:
                return (sy, sx), f"sidecar {found[1].name}", sidecar
        side = math.isqrt(n_frames)
        if side * side == n_frames:
            return (side, side), "square", sidecar
        raise StempressError(
            f"{self.path}: {n_frames} frames is not a square scan and the scan shape is not stored; "
            "give --scan-shape SCAN_YxSCAN_X"
        )

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows ``[start, stop)`` = frames ``[start*scan_x, stop*scan_x)``, across data files."""
        start, stop = self.check_rows(start, stop)
        scan_x, det_y, det_x = self.shape[1:]
        first, last = start * scan_x, stop * scan_x
        out = np.empty((last - first, det_y, det_x), dtype=self.dtype)
        for offset, dset in self._parts:
            lo, hi = max(first, offset), min(last, offset + dset.shape[0])
            if lo < hi:
                where = f"{dset.file.filename}:{dset.name}"
                read_into(dset, slice(lo - offset, hi - offset), out[lo - first:hi - first], where,
                          f"rows {start}..{stop} (frames {lo - offset}..{hi - offset})")
        return out.reshape(stop - start, scan_x, det_y, det_x)

    def pixel_mask(self) -> np.ndarray | None:
        """The detector's bad-pixel mask (nonzero = bad), if the master file has one."""
        mask = self._file.get(f"{_DETECTOR}/detectorSpecific/pixel_mask")
        return mask[()] if isinstance(mask, h5py.Dataset) else None

    def close(self) -> None:
        """Release the master and (through it) the data files."""
        for _, dset in self._parts:
            if dset.id.valid:
                dset.file.close()
        self._parts = []
        if self._file.id.valid:
            self._file.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # h5py handles cannot be pickled; a worker process reopens the master by path.
        return (type(self), (self.path, self.shape[:2]))

    def __repr__(self) -> str:
        return f"NxmxSource({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"
