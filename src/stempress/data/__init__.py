"""Sources: every format becomes a ``Dataset4D`` read in blocks of scan rows."""

from stempress.data.base import ArraySource, Block, Dataset4D, iter_blocks
from stempress.data.hdf5 import Hdf5Source
from stempress.data.mib import MibSource
from stempress.data.npy import NpySource
from stempress.data.nxmx import NxmxSource
from stempress.data.open import open_source

__all__ = [
    "ArraySource",
    "Block",
    "Dataset4D",
    "Hdf5Source",
    "MibSource",
    "NpySource",
    "NxmxSource",
    "iter_blocks",
    "open_source",
]
