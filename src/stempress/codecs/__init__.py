"""Codecs: one class per codec family, their registry, the catalog of lossless methods, and chunk shapes.

Names are imported on first use (PEP 562). The file formats of the study's non-HDF5 baselines are the benchmark's
(``stempress.bench.baselines``).
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "CATALOG": "catalog", "EXCLUDED": "catalog", "SETS": "catalog", "Codec": "catalog", "get_codec": "catalog",
    "select_codecs": "catalog",
    "PAPER_CHUNKINGS": "chunking", "chunk_shape": "chunking", "chunking_label": "chunking",
    "parse_chunk_shape": "chunking",
    "codec_from_config": "registry", "codec_from_pipeline": "registry",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = sorted(_HOMES)
