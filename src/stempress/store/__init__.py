"""Storing cubes: compressed in parallel into standard HDF5 (EMD 1.0 or a plain dataset), verified chunk by chunk."""

from stempress.data.calibration import Calibration
from stempress.data.emd import EMD_DATA_PATH, LAYOUTS, PLAIN_DATA_PATH
from stempress.store.compress import AUTO, DEFAULT_CODEC, CompressReport, compress
from stempress.store.verify import VerifyReport, verify

__all__ = [
    "AUTO",
    "DEFAULT_CODEC",
    "EMD_DATA_PATH",
    "LAYOUTS",
    "PLAIN_DATA_PATH",
    "Calibration",
    "CompressReport",
    "VerifyReport",
    "compress",
    "verify",
]
