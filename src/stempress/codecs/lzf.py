"""LZF (filter 32000), compiled into h5py: fast, low ratio, no direct-chunk encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stempress.codecs.base import Hdf5Codec

LZF_ID = 32000


@dataclass(frozen=True)
class Lzf(Hdf5Codec):
    """h5py's LZF filter; it has no settings."""

    codec_id = "lzf"
    family = "hdf5-builtin"
    filter_ids = (LZF_ID,)
    needs_plugin = False

    @property
    def params(self) -> dict[str, Any]:
        return {"filter": "lzf"}

    def h5_kwargs(self) -> dict[str, Any]:
        return {"compression": "lzf"}

    def encoder_problem(self) -> str | None:
        return ("lzf (32000): h5py compiles LZF into its filter only and no dependency exposes it to Python "
                "with the GIL released")
