"""One entry point from "what the user typed" to a source: by suffix, else by the file's first bytes; and the
same call again anywhere (``SourceSpec``, what ``open_source`` was given, small and picklable).

Why a spec: an open HDF5 file or MIB memory map cannot travel to another process or a cluster node, but its path,
dataset and scan shape can (LiberTEM's partitions work the same way).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from stempress.data.base import ArraySource, Dataset4D
from stempress.data.hdf5 import Hdf5Source, open_hdf5
from stempress.data.mib import MibSource
from stempress.data.npy import NpySource
from stempress.data.nxmx import NxmxSource, is_nxmx_master
from stempress.errors import StempressError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd", ".nxs")
SUPPORTED = ("HDF5/EMD 1.0 (.h5 .hdf5 .hdf .emd .nxs, a Dectris NXmx master, stempy's sparse files and "
             "stempress entropy-coded files included), Merlin .mib, numpy .npy, LiberTEM raw_csr (.toml), "
             "or synthetic:NAME")
#: What ``file_kind`` can say: the HDF5 kinds first, then the others.
HDF5_KINDS = ("hdf5", "nxmx", "stempy", "entropy")
#: Kinds holding counted electrons as events or their entropy code (not a dense cube).
EVENT_KINDS = ("stempy", "raw_csr", "entropy")

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


def _hdf5_kind(path: Path) -> str:
    """Which HDF5 file: an NXmx master, stempy's sparse events, our entropy code, or a plain (EMD) cube."""
    with open_hdf5(path) as f:
        if is_nxmx_master(f):
            return "nxmx"
        if "electron_events" in f and "frames" in f["electron_events"]:
            return "stempy"
        if "format" in f.attrs:
            from stempress.data.entropy_file import is_entropy_file  # the codec's modules: only when it may be

            if is_entropy_file(f):
                return "entropy"
    return "hdf5"


def _container(path: Path) -> str:
    """The container from the suffix, else the first bytes: hdf5, mib, npy, raw_csr or unknown."""
    suffix = path.suffix.lower()
    return ("hdf5" if suffix in HDF5_SUFFIXES else "mib" if suffix == ".mib"
            else "npy" if suffix == ".npy" else "raw_csr" if suffix == ".toml" else _sniff(path))


def file_kind(path: Path) -> str:
    """The format of an existing file: HDF5 files are looked into (one of ``HDF5_KINDS``), others are
    ``raw_csr``, ``mib``, ``npy`` or ``unknown``."""
    kind = _container(path)
    return _hdf5_kind(path) if kind == "hdf5" else kind


def scan_shape_note(source: Dataset4D) -> str | None:
    """A warning when the source guessed its scan shape (a square, a header...) rather than being told it."""
    md = source.metadata
    if not md.get("scan_shape_inferred"):
        return None
    sy, sx = source.shape[:2]
    how = md.get("scan_shape_source") or "guessed"
    return (f"{source.name}: the scan shape {sy}x{sx} was not given but inferred from the file ({how}, "
            f"{sy * sx} frames); if it is wrong, give --scan-shape ROWSxCOLUMNS")


def _open_synthetic(spec: str) -> Dataset4D:
    try:
        suites = import_module("stempress.data.suites")
    except ModuleNotFoundError as exc:
        if exc.name not in ("stempress.data.suites", "stempress.data.synthetic"):
            raise
        raise StempressError(
            f"{spec}: synthetic data is not available in this install (no stempress.data.synthetic); "
            "reinstall stempress or give a file"
        ) from exc
    return suites.open_synthetic(spec)


def open_source(spec: str | Path | np.ndarray, *, dataset: str | None = None,
                scan_shape: tuple[int, int] | None = None) -> Dataset4D:
    """Open a cube for block-wise reading; the caller closes it (sources are context managers). A source opened
    from a file or a ``synthetic:`` name remembers how (``opened_from``), so workers can reopen it."""
    source = _open(spec, dataset, scan_shape)
    if not isinstance(spec, np.ndarray):
        with contextlib.suppress(AttributeError):  # a source with __slots__ simply cannot be reopened elsewhere
            source.opened_from = SourceSpec(_absolute(spec), dataset, None if scan_shape is None else tuple(scan_shape))
    return source


@dataclass(frozen=True)
class SourceSpec:
    """``open_source(target, dataset=..., scan_shape=...)`` again, anywhere the file is visible."""

    target: str
    dataset: str | None = None
    scan_shape: tuple[int, int] | None = None

    def open(self) -> Dataset4D:
        return open_source(self.target, dataset=self.dataset, scan_shape=self.scan_shape)


def spec_of(source: Any) -> SourceSpec | None:
    """How to reopen ``source`` elsewhere, or None for sources that live only here (arrays, wrappers)."""
    spec = getattr(source, "opened_from", None)
    return spec if isinstance(spec, SourceSpec) else None


def _absolute(spec: str | Path) -> str:
    """A file given relative to this directory as an absolute path: a Dask worker elsewhere has another one."""
    path = Path(spec)
    return str(path.absolute()) if not str(spec).startswith("synthetic:") and path.exists() else str(spec)


def _open(spec: str | Path | np.ndarray, dataset: str | None, scan_shape: tuple[int, int] | None) -> Dataset4D:
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
    kind = _container(path)
    if kind != "hdf5" and dataset is not None:
        raise StempressError(f"{path}: --dataset applies to HDF5 files only; drop it for this {kind} file")
    if kind == "hdf5" and dataset is None:
        kind = _hdf5_kind(path)
    if kind == "nxmx":
        return NxmxSource(path, scan_shape)
    if kind == "stempy":
        from stempress.data.stempy import StempySource

        return StempySource(path)
    if kind == "entropy":
        from stempress.data.entropy_file import open_entropy

        return open_entropy(path)
    if kind == "hdf5":
        return Hdf5Source(path, dataset, scan_shape)
    if kind == "raw_csr":
        from stempress.data.raw_csr import RawCsrSource

        return RawCsrSource(path, scan_shape)
    if kind == "mib":
        return MibSource(path, scan_shape)
    if kind == "npy":
        return NpySource(path, scan_shape)
    suffix = path.suffix.lower()
    hint = "; open the .mib beside it" if suffix == ".hdr" else ""
    raise StempressError(f"{path}: unknown format {suffix or '(no suffix)'}; supported: {SUPPORTED}{hint}")
