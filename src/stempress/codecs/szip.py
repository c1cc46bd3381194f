"""SZIP (filter 4, libaec), built into HDF5 when HDF5 was built with it; no direct-chunk encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import h5py

from stempress.codecs.base import Hdf5Codec, filter_state
from stempress.errors import require_choice

SZIP_ID = 4
#: h5py's ``compression_opts`` coding names and the option-mask bits HDF5 stores for them (H5_SZIP_*_OPTION_MASK).
OPTION_MASKS = {"nn": 32, "ec": 4}


@dataclass(frozen=True)
class Szip(Hdf5Codec):
    """SZIP with h5py's coding (``nn`` nearest-neighbour or ``ec`` entropy) and pixels per block."""

    codec_id = "szip"
    family = "hdf5-builtin"
    filter_ids = (SZIP_ID,)
    needs_plugin = False

    options_mask: str = "nn"
    pixels_per_block: int = 8

    def __post_init__(self) -> None:
        require_choice(self.options_mask, tuple(OPTION_MASKS), "szip coding", self.name)

    @property
    def params(self) -> dict[str, Any]:
        return {"filter": "szip", **self.settings()}

    def h5_kwargs(self) -> dict[str, Any]:
        return {"compression": "szip", "compression_opts": (self.options_mask, self.pixels_per_block)}

    def unavailable_reason(self) -> str | None:
        present, info = filter_state(SZIP_ID)
        if not present:
            return "HDF5 built without szip (libaec); use an h5py/HDF5 build with libaec or another codec"
        if not info & h5py.h5z.FILTER_CONFIG_ENCODE_ENABLED:
            return "HDF5 built without szip encoder (libaec); use an h5py/HDF5 build with libaec encoding"
        return None

    def encoder_problem(self) -> str | None:
        return "szip (4): libaec is not exposed to Python by any dependency"

    @classmethod
    def settings_from_cd_values(cls, values: tuple[int, ...]) -> dict[str, Any]:
        """cd_values: (option mask with HDF5's own bits added, pixels per block, bits per pixel, per scanline)."""
        codings = [name for name, bit in OPTION_MASKS.items() if values[0] & bit]
        return {"options_mask": codings[0], "pixels_per_block": values[1]}
