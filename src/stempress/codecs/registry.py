"""Codec classes by id, as numcodecs' registry: a stored configuration or a file's filter pipeline rebuilds
the codec that wrote it, whatever the catalog calls it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from stempress.codecs.base import Codec, Hdf5Codec, Pipeline
from stempress.codecs.bitshuffle import Bitshuffle
from stempress.codecs.blosc import Blosc
from stempress.codecs.blosc2 import Blosc2
from stempress.codecs.bzip2 import Bzip2
from stempress.codecs.deflate import Deflate
from stempress.codecs.file_codecs import BaselineFile, EntropyFile, EventsFile
from stempress.codecs.lz4 import Lz4
from stempress.codecs.lzf import Lzf
from stempress.codecs.none import Uncompressed
from stempress.codecs.szip import Szip
from stempress.codecs.zstd import Zstd
from stempress.errors import StempressError

#: Every codec class stempress knows, by its ``codec_id``.
REGISTRY: dict[str, type[Codec]] = {cls.codec_id: cls for cls in (
    Uncompressed, Deflate, Lzf, Szip, Blosc, Blosc2, Lz4, Bitshuffle, Zstd, Bzip2,
    BaselineFile, EventsFile, EntropyFile,
)}


def codec_class(codec_id: object) -> type[Codec]:
    """The class registered as ``codec_id``, or a one-line error naming the known ids."""
    cls = REGISTRY.get(codec_id) if isinstance(codec_id, str) else None
    if cls is None:
        raise StempressError(f"unknown codec id {codec_id!r}; known ids: {', '.join(REGISTRY)} "
                             "(a configuration from a newer stempress needs that version)")
    return cls


def codec_from_config(config: Mapping[str, Any]) -> Codec:
    """The codec a ``get_config()`` (or ``config()``) dict describes, as numcodecs' ``get_codec(config)``."""
    if not isinstance(config, Mapping):
        raise StempressError(f"a codec configuration is a mapping with an 'id', not {type(config).__name__}")
    return codec_class(config.get("id")).from_config(config)


def codec_from_pipeline(pipeline: Pipeline) -> Hdf5Codec | None:
    """The codec whose filters are exactly ``pipeline`` with its cd_values' settings, named after them
    (e.g. ``zstd(clevel=7)``); None when no family stores chunks that way (unknown filters, extra filters)."""
    for cls in REGISTRY.values():
        if issubclass(cls, Hdf5Codec):
            codec = cls.from_pipeline(pipeline, cls.codec_id)
            if codec is not None:
                return replace(codec, name=_label(codec))
    return None


def _label(codec: Codec) -> str:
    """``id(setting=value, ...)``, leaving out settings that are unset (None) or off (False)."""
    settings = ", ".join(f"{k}={v}" for k, v in codec.settings().items() if v is not None and v is not False)
    return f"{codec.codec_id}({settings})" if settings else codec.codec_id
