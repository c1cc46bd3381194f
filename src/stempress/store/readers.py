"""How the field's tools open what stempress writes: the one call per tool, said where the file is written.

Two things decide it, and neither is visible in the file's name:

- Filters. gzip and shuffle are in every HDF5 library; lzf is registered by h5py when it is imported, so only
  h5py-based programs (HyperSpy, py4DSTEM, LiberTEM) decode it; every other codec of the catalog (Blosc, Blosc2,
  LZ4, Bitshuffle, Zstd, BZip2) is an hdf5plugin filter. h5py programs decode those after ``import hdf5plugin``
  (py4DSTEM 0.14 and LiberTEM 0.16 import it themselves); HyperSpy's EMD and NeXus readers, h5dump, HDFView and
  MATLAB do not, so HDF5 must find the filter where ``HDF5_PLUGIN_PATH`` points: hdf5plugin's own plugin
  folder, which ``stempress plugin-path`` prints as a
  line to ``export`` (the field's fix, hdf5plugin's ``PLUGIN_PATH``); ``benchmarks/check_plain_readers.py`` runs
  each of those readers that way, h5dump of the system's HDF5 1.10 included.
- The extension. HyperSpy picks a reader from the extension alone: ``.emd`` is RosettaSciIO's EMD reader,
  ``.hspy`` its hspy reader, while ``.h5`` is claimed by four readers (Tofwerk, Delmic, Arina, USID), so
  ``hs.load("x.h5")`` refuses and needs ``file_format``; no attribute in the file changes that. py4DSTEM goes by
  the extension too, and takes ``.h5``, ``.hdf5``, ``.emd`` and ``.py4dstem`` only. So an EMD file named
  ``.emd`` opens in both with no option, while a reduced file needs ``file_format="hspy"`` in HyperSpy (a
  ``.hspy`` name would drop it, and py4DSTEM would then refuse the file).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path

from stempress.data.hdf5 import FILTER_NAMES
from stempress.errors import StempressError

#: Filters every HDF5 library has (szip only where built with libaec).
HDF5_BUILTIN = frozenset({1, 2, 3, 4, 5, 6})
#: Filters h5py registers on import: other HDF5 programs lack them.
H5PY_ONLY = frozenset({32000})
#: HyperSpy reader each stempress layout opens with, and the extension that selects it without ``file_format``.
HYPERSPY_EXTENSIONS = {"emd": ".emd", "hspy": ".hspy"}
#: Extensions ``py4DSTEM.read`` accepts for HDF5 files (py4DSTEM 0.14's ``_parse_filetype``).
PY4DSTEM_EXTENSIONS = (".h5", ".hdf5", ".emd", ".py4dstem")
#: What precedes the ``hs.load`` call in the lines below, so a script can take the call verbatim.
HS_CALL_PREFIX = "HyperSpy: "
#: Programs that need ``HDF5_PLUGIN_PATH`` for an hdf5plugin filter (h5py needs ``import hdf5plugin`` instead;
#: py4DSTEM and LiberTEM import it themselves).
PLUGIN_USERS = "HyperSpy, h5dump, HDFView and MATLAB"


def plugin_path() -> Path:
    """hdf5plugin's folder of compiled HDF5 filter plugins (what ``HDF5_PLUGIN_PATH`` must name)."""
    try:
        import hdf5plugin
    except ImportError:
        raise StempressError("hdf5plugin is not installed here, so there is no plugin folder to point HDF5 at; "
                             "pip install hdf5plugin") from None
    return Path(hdf5plugin.PLUGIN_PATH)


def export_line(folder: Path | None = None) -> str:
    """``export HDF5_PLUGIN_PATH=<folder>``, quoted for a POSIX shell."""
    return f"export HDF5_PLUGIN_PATH={shlex.quote(str(folder or plugin_path()))}"


def plugin_filters(filter_ids: Iterable[int]) -> list[str]:
    """Labels (``blosc (32001)``) of the filters other programs find only through ``HDF5_PLUGIN_PATH``."""
    return [f"{FILTER_NAMES.get(fid, 'filter')} ({fid})" for fid in dict.fromkeys(filter_ids)
            if fid not in HDF5_BUILTIN and fid not in H5PY_ONLY]


def hyperspy_call(path: Path, reader: str, dataset_path: str | None = None) -> str:
    """The ``hs.load`` call that opens ``path`` with RosettaSciIO's ``reader``: ``file_format`` only where the
    extension does not already select that reader; the NeXus reader gets the one dataset to show."""
    name = repr(str(path))
    if reader == "nexus":
        return f"hs.load({name}, file_format='nexus', dataset_path={dataset_path!r})"
    if Path(path).suffix.lower() == HYPERSPY_EXTENSIONS.get(reader):
        return f"hs.load({name})"
    return f"hs.load({name}, file_format={reader!r})"


def py4dstem_call(path: Path) -> str:
    """``py4DSTEM.read(path)``, or why py4DSTEM will not take this name."""
    if Path(path).suffix.lower() in PY4DSTEM_EXTENSIONS:
        return f"py4DSTEM.read({str(path)!r})"
    return f"rename it .h5 or .emd first (py4DSTEM.read accepts only {', '.join(PY4DSTEM_EXTENSIONS)})"


def filter_notes(filter_ids: Iterable[int]) -> list[str]:
    """What readers other than stempress need for these filters, one line each (none for gzip)."""
    ids = list(filter_ids)
    notes = []
    plugins = plugin_filters(ids)
    if plugins:
        notes.append(f"{', '.join(plugins)} is an hdf5plugin filter: {PLUGIN_USERS} decode it once the shell "
                     f"has run `{export_line()}` (`stempress plugin-path` prints it); h5py scripts can "
                     "`import hdf5plugin` instead")
    if any(fid in H5PY_ONLY for fid in ids):
        notes.append("lzf (32000) ships with h5py only: h5py, HyperSpy, py4DSTEM and LiberTEM read it; h5dump, "
                     "HDFView and MATLAB cannot (use gzip_6 or an hdf5plugin codec for them)")
    return notes


def cube_open_lines(path: Path, layout: str, dataset_path: str, filter_ids: Iterable[int]) -> list[str]:
    """How to open a cube ``compress`` (or ``simulate``) wrote: the calls, then what its filters need."""
    if layout == "emd":
        calls = f"py4DSTEM: {py4dstem_call(path)}; {HS_CALL_PREFIX}{hyperspy_call(path, 'emd')}"
    else:
        calls = (f"h5py: h5py.File({str(path)!r})[{dataset_path!r}]; "
                 f"{HS_CALL_PREFIX}{hyperspy_call(path, 'nexus', dataset_path)}")
    return [calls, *filter_notes(filter_ids)]


def reduced_open_line(path: Path) -> str:
    """How to open a ``reduce`` output in py4DSTEM and HyperSpy."""
    return f"py4DSTEM: {py4dstem_call(path)}; {HS_CALL_PREFIX}{hyperspy_call(path, 'hspy')}"
