"""Sources: every format becomes a ``Dataset4D`` read in blocks of scan rows.

Names are imported on first use (PEP 562), so a command that reads a .npy does not load the .mib reader
(RosettaSciIO) or the NXmx one.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "ArraySource": "base", "Block": "base", "Dataset4D": "base", "iter_blocks": "base",
    "Hdf5Source": "hdf5", "MibSource": "mib", "NpySource": "npy", "NxmxSource": "nxmx", "open_source": "open",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = sorted(_HOMES)
