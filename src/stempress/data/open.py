"""One entry point from "what the user typed" to a source: by suffix, else by the file's first bytes."""

from __future__ import annotations

import re
from importlib import import_module
from pathlib import Path

import numpy as np

from stempress.data.base import ArraySource, Dataset4D
from stempress.data.hdf5 import Hdf5Source, open_hdf5
from stempress.data.mib import MibSource
from stempress.data.npy import NpySource
from stempress.data.nxmx import NxmxSource, is_nxmx_master
from stempress.errors import StempressError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd", ".nxs")
SUPPORTED = ("HDF5/EMD 1.0 (.h5 .hdf5 .hdf .emd .nxs, a Dectris NXmx master and stempy's sparse files "
             "included), Merlin .mib, numpy .npy, LiberTEM raw_csr (.toml), or synthetic:NAME")

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_DATASET_SPEC = re.compile(r"^(?P<file>.*?\.(?:h5|hdf5|hdf|emd|nxs)):(?P<dataset>.+)$", re.IGNORECASE)


def _split_dataset(spec: str | Path, dataset: str | None) -> tuple[Path, str | None]:
    """``file.h5:/group/data`` -> (file.h5, /group/data); a real file whose name has a colon wins."""
    text = str(spec)
    match = _DATASET_SPEC.match(text)
    if match is None or Path(text).exists():
        return Path(spec), dataset
    inline = match["dataset"]
    if dataset is not None and dataset.strip("/") != inline.strip("/"):
        raise StempressError(
            f"{text}: dataset given twice ({inline!r} and --dataset {dataset!r}); give it once"
        )
    return Path(match["file"]), inline


def _sniff(path: Path) -> str:
    """Format from the first bytes, for files with an unusual suffix."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head == _HDF5_MAGIC:
        return "hdf5"
    if head.startswith(b"MQ1,"):
        return "mib"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    return "unknown"


def _is_nxmx(path: Path) -> bool:
    with open_hdf5(path) as f:
        return is_nxmx_master(f)


def _is_stempy(path: Path) -> bool:
    """stempy's sparse layout: electron events per scan position, not a dense dataset."""
    with open_hdf5(path) as f:
        return "electron_events" in f and "frames" in f["electron_events"]


def _open_synthetic(spec: str) -> Dataset4D:
    try:
        synthetic = import_module("stempress.data.synthetic")
    except ModuleNotFoundError as exc:
        if exc.name != "stempress.data.synthetic":
            raise
        raise StempressError(
            f"{spec}: synthetic data is not available in this install (no stempress.data.synthetic); "
            "reinstall stempress or give a file"
        ) from exc
    return synthetic.open_synthetic(spec)


def open_source(spec: str | Path | np.ndarray, *, dataset: str | None = None,
                scan_shape: tuple[int, int] | None = None) -> Dataset4D:
    """Open a cube for block-wise reading; the caller closes it (sources are context managers)."""
    if isinstance(spec, np.ndarray):
        source = ArraySource(spec)
        if scan_shape is not None and tuple(scan_shape) != source.shape[:2]:
            raise StempressError(f"array: --scan-shape {tuple(scan_shape)} does not match the array's "
                                 f"scan shape {source.shape[:2]}; drop --scan-shape")
        return source
    if isinstance(spec, str) and spec.startswith("synthetic:"):
        return _open_synthetic(spec)
    path, dataset = _split_dataset(spec, dataset)
    if not path.exists():
        raise StempressError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise StempressError(f"{path}: is a directory; give the data file inside it")
    suffix = path.suffix.lower()
    kind = ("hdf5" if suffix in HDF5_SUFFIXES else "mib" if suffix == ".mib"
            else "npy" if suffix == ".npy" else "raw_csr" if suffix == ".toml" else _sniff(path))
    if kind != "hdf5" and dataset is not None:
        raise StempressError(f"{path}: --dataset applies to HDF5 files only; drop it for this {kind} file")
    if kind == "hdf5":
        if dataset is None and _is_nxmx(path):
            return NxmxSource(path, scan_shape)
        if dataset is None and _is_stempy(path):
            from stempress.events.stempy import StempySource

            return StempySource(path)
        return Hdf5Source(path, dataset, scan_shape)
    if kind == "raw_csr":
        from stempress.events.libertem import RawCsrSource

        return RawCsrSource(path, scan_shape)
    if kind == "mib":
        return MibSource(path, scan_shape)
    if kind == "npy":
        return NpySource(path, scan_shape)
    hint = "; open the .mib beside it" if suffix == ".hdr" else ""
    raise StempressError(f"{path}: unknown format {suffix or '(no suffix)'}; supported: {SUPPORTED}{hint}")
