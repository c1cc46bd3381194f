"""What a result depends on besides the data: library versions, the machine, the protocol, the command."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from stempress.cores import usable_cores
from stempress.provenance import PACKAGES, package_versions  # noqa: F401 - the run's record lists them


#: Packages whose versions change codec behaviour or speed.
def codec_library_versions() -> dict[str, Any]:
    """Versions of the C libraries behind the filters, where the Python packages expose them."""
    import blosc2
    import h5py
    import hdf5plugin
    import numcodecs.blosc

    info: dict[str, Any] = {
        "hdf5": h5py.version.hdf5_version,
        "c-blosc2": getattr(blosc2, "blosclib_version", None),
        "c-blosc (numcodecs)": getattr(numcodecs.blosc, "VERSION_STRING", None),
        "hdf5plugin_build": str(hdf5plugin.get_config().build_config),
        "hdf5plugin_filters": dict(hdf5plugin.get_config().registered_filters),
    }
    try:
        import numcodecs.zstd

        info["zstd (numcodecs)"] = getattr(numcodecs.zstd, "VERSION_NUMBER", None)
    except ImportError:
        info["zstd (numcodecs)"] = None
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(protocol: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata file's contents."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command_line": sys.argv,
        "protocol": protocol,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_usable": usable_cores(),
        "memory_total_gib": round(psutil.virtual_memory().total / 1024**3, 2),
        "blosc_nthreads": os.environ.get("BLOSC_NTHREADS", "library default (1)"),
        "packages": package_versions(),
        "codec_libraries": codec_library_versions(),
        **(extra or {}),
    }
